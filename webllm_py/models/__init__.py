"""Model families. Each family is one file whose graph reads like its architecture diagram;
adding one is a new file and a line in FAMILIES."""
from __future__ import annotations

from ..errors import UnsupportedModelError
from .config import ModelConfig
from .gemma import GemmaModel
from .llama import LlamaModel
from .mixtral import MixtralModel
from .phi2 import Phi2Model
from .stablelm import StableLmModel

FAMILIES = {"llama": LlamaModel, "mistral": LlamaModel, "qwen2": LlamaModel}
FAMILIES.update({"phi2": Phi2Model, "stablelm": StableLmModel, "mixtral": MixtralModel})
FAMILIES.update({"gemma": GemmaModel, "gemma2": GemmaModel, "gemma3": GemmaModel})


def build_model(device, cfg: ModelConfig, weights, cache, max_tokens: int):
    family = FAMILIES.get(cfg.arch)
    if family is None:
        raise UnsupportedModelError(f"no model graph for architecture {cfg.arch!r} (have: {sorted(FAMILIES)})")
    return family(device, cfg, weights, cache, max_tokens=max_tokens)
