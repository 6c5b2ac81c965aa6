"""The family registry: architecture -> model graph and config readers.

A GGUF file names its architecture in `general.architecture`, a Hugging Face checkpoint in config.json's
`architectures` (class names). Each row says which graph runs it and which reader turns its metadata
into a ModelConfig; adding a family is a new module and its rows here.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Callable

from ..errors import ModelFormatError, UnsupportedModelError
from ..formats.gguf_keys import General
from ..planner import DEFAULT_POLICY, KernelPolicy, prefill_planes_auto, staged_planes_auto
from . import gemma
from .config import ModelConfig, read_gguf, read_hf
from .gemma import GemmaModel
from .llama import LlamaModel
from .mixtral import MixtralModel
from .phi2 import Phi2Model
from .stablelm import StableLmModel


@dataclass(frozen=True)
class Family:
    model: type  # the graph: model(device, cfg, weights, cache, max_tokens=..., policy=...)
    hf_class: str  # config.json's architectures entry
    # GGUF metadata -> config (None: no GGUF files of this name; GGUF Mixtral files say "llama")
    from_gguf: Callable[[dict[str, Any], set[str], str], ModelConfig] | None
    from_hf: Callable[[dict[str, Any], str], ModelConfig]


FAMILIES: dict[str, Family] = {
    # Llama 2/3, SmolLM2, TinyLlama; Mistral; Qwen2 (QKV biases): the Llama graph with small switches
    "llama": Family(LlamaModel, "LlamaForCausalLM", read_gguf, read_hf),
    "mistral": Family(LlamaModel, "MistralForCausalLM", read_gguf, read_hf),
    "qwen2": Family(LlamaModel, "Qwen2ForCausalLM", read_gguf, read_hf),
    "phi2": Family(Phi2Model, "PhiForCausalLM", read_gguf, read_hf),
    "stablelm": Family(StableLmModel, "StableLmForCausalLM", read_gguf, read_hf),
    "mixtral": Family(MixtralModel, "MixtralForCausalLM", None, read_hf),
    # Gemma 1/2/3: local/global layers, softcaps, norm offsets (models/gemma.py reads their configs)
    "gemma": Family(GemmaModel, "GemmaForCausalLM", gemma.config_from_gguf, gemma.config_from_hf),
    "gemma2": Family(GemmaModel, "Gemma2ForCausalLM", gemma.config_from_gguf, gemma.config_from_hf),
    "gemma3": Family(GemmaModel, "Gemma3ForCausalLM", gemma.config_from_gguf, gemma.config_from_hf),
}
HF_ARCH = {f.hf_class: arch for arch, f in FAMILIES.items()}


def config_from_gguf(meta: dict[str, Any], tensor_names: set[str]) -> ModelConfig:
    arch = meta.get(General.ARCHITECTURE)
    family = FAMILIES.get(arch) if isinstance(arch, str) else None
    if not isinstance(arch, str) or family is None or family.from_gguf is None:
        supported = sorted(a for a, f in FAMILIES.items() if f.from_gguf)
        raise UnsupportedModelError(f"model architecture {arch!r} is not supported (supported: {supported})")
    return family.from_gguf(meta, tensor_names, arch)


def config_from_hf(cfg: dict[str, Any]) -> ModelConfig:
    if not isinstance(cfg, dict):
        raise ModelFormatError("config.json must hold a JSON object")
    archs = cfg.get("architectures") or []
    arch = next((HF_ARCH[a] for a in archs if a in HF_ARCH), None)
    if arch is None:
        raise UnsupportedModelError(
            f"model architecture {archs or cfg.get('model_type')!r} is not supported (supported: {sorted(HF_ARCH)})"
        )
    return FAMILIES[arch].from_hf(cfg, arch)


def build_model(
    device: Any, cfg: ModelConfig, weights: Any, cache: Any, max_tokens: int, policy: KernelPolicy = DEFAULT_POLICY
) -> Any:
    family = FAMILIES.get(cfg.arch)
    if family is None:
        raise UnsupportedModelError(f"no model graph for architecture {cfg.arch!r} (have: {sorted(FAMILIES)})")
    # the model's width decides x's planes in decode and prefill (every family alike), unless the policy
    # names them (or, for decode, tilings)
    if policy.staged_planes is None and not policy.staged_tilings:
        policy = replace(policy, staged_planes=staged_planes_auto(cfg.dim))
    if policy.prefill_planes is None:
        policy = replace(policy, prefill_planes=prefill_planes_auto(cfg.dim))
    return family.model(device, cfg, weights, cache, max_tokens=max_tokens, policy=policy)
