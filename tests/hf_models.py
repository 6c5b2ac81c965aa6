"""Tiny random Hugging Face checkpoints built by `transformers` itself (its own config classes and
`save_pretrained(..., safe_serialization=True)`), next to a real tokenizer.json from build/tokenizers/.

Each Variant turns on what its family can do: Qwen2's QKV biases, Llama 3's rope scaling, tied and
untied heads, Llama's attention/MLP biases, explicit head_dim != hidden / heads, and the three dtypes
checkpoints ship in (F32, BF16, F16). Weights are drawn with a larger std than training would
(`init_std`) so the random models' outputs are peaked: greedy tokens then have comfortable top-2
margins instead of near-ties, and token equality stays a meaningful test.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOKENIZERS = ROOT / "build" / "tokenizers"


@dataclass(frozen=True)
class Variant:
    name: str
    family: str  # "llama", "qwen2", "mistral"
    dtype: str  # torch dtype the weights are saved in
    tokenizer: str = "smollm2"  # a folder of build/tokenizers/
    seed: int = 0
    init_std: float = 0.2
    config: dict = field(default_factory=dict)


# Shapes shared by all: 2-3 layers, GQA 4 query heads over 2 KV heads, head_dim 32.
BASE = dict(num_attention_heads=4, num_key_value_heads=2, head_dim=32, max_position_embeddings=256, rms_norm_eps=1e-5)

VARIANTS = [
    # Llama, tied head, every optional bias on, hidden 64 while heads x head_dim is 128.
    Variant(
        "llama-tied-bias-f32",
        "llama",
        "float32",
        seed=46,
        config=dict(
            hidden_size=64,
            intermediate_size=160,
            num_hidden_layers=2,
            tie_word_embeddings=True,
            attention_bias=True,
            mlp_bias=True,
            rope_theta=10000.0,
        ),
    ),
    # Llama 3.1-style rope scaling (small original context so all three frequency bands occur), untied head.
    Variant(
        "llama3-rope-untied-bf16",
        "llama",
        "bfloat16",
        seed=4,
        config=dict(
            hidden_size=128,
            intermediate_size=256,
            num_hidden_layers=3,
            tie_word_embeddings=False,
            rope_scaling={
                "rope_type": "llama3",
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 64,
            },
            rope_theta=500000.0,
        ),
    ),
    # Qwen2: QKV biases (always on in the family), untied head, F16.
    Variant(
        "qwen2-bias-f16",
        "qwen2",
        "float16",
        seed=121,
        config=dict(
            hidden_size=128,
            intermediate_size=224,
            num_hidden_layers=2,
            tie_word_embeddings=False,
            rope_theta=1000000.0,
            use_sliding_window=False,
        ),
    ),
    # Mistral without sliding window, with Mistral's own SentencePiece-style tokenizer (vocab 32000).
    Variant(
        "mistral-f32",
        "mistral",
        "float32",
        tokenizer="mistral",
        seed=23,
        config=dict(
            hidden_size=64,
            intermediate_size=192,
            num_hidden_layers=2,
            tie_word_embeddings=False,
            sliding_window=None,
            rope_theta=10000.0,
        ),
    ),
]
BY_NAME = {v.name: v for v in VARIANTS}


def tokenizer_vocab_size(tokenizer: str) -> int:
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(TOKENIZERS / tokenizer / "tokenizer.json")).get_vocab_size(with_added_tokens=True)


def _config(v: Variant):
    import transformers

    cls = getattr(transformers, CONFIG_CLASS[v.family])
    kw = {**BASE, **v.config} if v.family in ("llama", "qwen2", "mistral") else dict(v.config)
    # transformers 5 takes rope settings as rope_parameters; keep the variant table in the familiar words.
    if "rope_parameters" in kw:  # Gemma 3: per layer type, already in transformers 5's words
        rope = kw.pop("rope_parameters")
    else:
        rope = dict(kw.pop("rope_scaling", None) or {"rope_type": "default"})
        rope["rope_theta"] = kw.pop("rope_theta")
    # a variant may take fewer ids than its tokenizer has (tests/test_model_matrix.py: a tiny vocabulary)
    vocab = kw.pop("vocab_size", None) or tokenizer_vocab_size(v.tokenizer)
    cfg = cls(vocab_size=vocab, initializer_range=v.init_std, rope_parameters=rope, **kw)
    cfg.architectures = [ARCHITECTURE[v.family]]
    return cfg


# Variant.family -> transformers config class and architecture (tests/test_model_families.py adds
# Phi-2, StableLM, Mixtral; their variants set every size themselves instead of taking BASE).
CONFIG_CLASS = {
    "llama": "LlamaConfig",
    "qwen2": "Qwen2Config",
    "mistral": "MistralConfig",
    "phi2": "PhiConfig",
    "stablelm": "StableLmConfig",
    "mixtral": "MixtralConfig",
}
# Gemma 1/2/3 (tests/test_model_gemma.py; Gemma 3 text-only).
CONFIG_CLASS.update({"gemma": "GemmaConfig", "gemma2": "Gemma2Config", "gemma3": "Gemma3TextConfig"})
ARCHITECTURE = {
    "llama": "LlamaForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "mistral": "MistralForCausalLM",
    "phi2": "PhiForCausalLM",
    "stablelm": "StableLmForCausalLM",
    "mixtral": "MixtralForCausalLM",
}
ARCHITECTURE.update({"gemma": "GemmaForCausalLM", "gemma2": "Gemma2ForCausalLM", "gemma3": "Gemma3ForCausalLM"})


def build(v: Variant, out_dir: str | os.PathLike) -> str:
    """Write the checkpoint (config.json, model.safetensors, tokenizer files) into out_dir/v.name."""
    import torch
    from transformers import AutoModelForCausalLM

    path = Path(out_dir) / v.name
    path.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(v.seed)
    model = AutoModelForCausalLM.from_config(_config(v), dtype=torch.float32)
    with torch.no_grad():
        # Norm weights start at 1 and biases at 0: draw them too, so a loader that drops or misreads
        # them (e.g. BF16 vectors, bias layout) changes the output.
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or ".norms." in name:  # .norms.: StableLM's per-head norms
                p.copy_(1.0 + 0.3 * torch.randn_like(p))
            elif name.endswith(".bias"):
                p.copy_(v.init_std * torch.randn_like(p))
    model = model.to(getattr(torch, v.dtype))
    model.save_pretrained(path, safe_serialization=True)
    src = TOKENIZERS / v.tokenizer
    for f in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        if (src / f).exists():
            shutil.copy(src / f, path / f)
    return str(path)


HEADS = dict(num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)


FAMILY_VARIANTS = [
    # Mistral, window 6: the 20-token prompt and every generated token see only the last 6 positions.
    Variant(
        "mistral-sliding-window",
        "mistral",
        "float32",
        tokenizer="mistral",
        seed=23,
        config=dict(
            hidden_size=64,
            intermediate_size=192,
            num_hidden_layers=2,
            tie_word_embeddings=False,
            sliding_window=6,
            rope_theta=10000.0,
        ),
    ),
    # Phi-2: half of each head rotates, shared q/k LayerNorms with bias, GQA, untied head with bias.
    Variant(
        "phi2",
        "phi2",
        "float32",
        seed=20,
        config=dict(
            hidden_size=128,
            intermediate_size=256,
            num_hidden_layers=2,
            qk_layernorm=True,
            tie_word_embeddings=False,
            hidden_act="gelu_new",
            layer_norm_eps=1e-5,
            **HEADS,
            rope_scaling={"rope_type": "default", "partial_rotary_factor": 0.5},
            rope_theta=10000.0,
        ),
    ),
    # StableLM 2 style: a quarter rotates, per-head q/k norms, QKV bias, parallel residual, BF16.
    Variant(
        "stablelm-parallel",
        "stablelm",
        "bfloat16",
        seed=16,
        config=dict(
            hidden_size=128,
            intermediate_size=192,
            num_hidden_layers=2,
            qk_layernorm=True,
            use_qkv_bias=True,
            use_parallel_residual=True,
            tie_word_embeddings=False,
            **HEADS,
            rope_scaling={"rope_type": "default", "partial_rotary_factor": 0.25},
            rope_theta=10000.0,
        ),
    ),
    # StableLM 3B style: sequential residual (post-attention LayerNorm), no qk norms, F16.
    Variant(
        "stablelm-sequential",
        "stablelm",
        "float16",
        seed=2,
        config=dict(
            hidden_size=128,
            intermediate_size=192,
            num_hidden_layers=2,
            qk_layernorm=False,
            use_qkv_bias=False,
            use_parallel_residual=False,
            tie_word_embeddings=False,
            **HEADS,
            rope_scaling={"rope_type": "default", "partial_rotary_factor": 0.25},
            rope_theta=10000.0,
        ),
    ),
    # Mixtral: 4 experts, top-2, window 12 (shorter than prompt + generated tokens).
    Variant(
        "mixtral-4x2",
        "mixtral",
        "float32",
        seed=48,
        config=dict(
            hidden_size=64,
            intermediate_size=96,
            num_hidden_layers=2,
            num_local_experts=4,
            num_experts_per_tok=2,
            sliding_window=12,
            head_dim=32,
            tie_word_embeddings=False,
            rms_norm_eps=1e-5,
            **HEADS,
            rope_theta=10000.0,
        ),
    ),
]
