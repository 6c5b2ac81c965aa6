"""Model families. Each family is one file whose graph reads like its architecture diagram;
adding one is a new file and its rows in families.FAMILIES."""

from __future__ import annotations

from .families import FAMILIES, build_model, config_from_gguf, config_from_hf

__all__ = ["FAMILIES", "build_model", "config_from_gguf", "config_from_hf"]
