"""Model hyper-parameters as data, read from GGUF metadata or a Hugging Face config.json."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from ..errors import ModelFormatError, UnsupportedModelError
from ..formats.gguf_keys import LLM, ArchMeta, Attention, Rope, Tokenizer

# Hugging Face activation names -> the kernels' names (gelu_new is GELU's tanh approximation).
HF_ACT = {"silu": "silu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh"}
# GGUF architectures with LayerNorms (and their own eps key) and the parallel residual switch.
LAYER_NORM_ARCHS = {"phi2", "stablelm"}


class FamilyOptions:
    """Base of a family's own typed options (ModelConfig.options), e.g. models.gemma.GemmaOptions."""

    def layer_windows(self, cfg: "ModelConfig") -> list[int | None] | None:
        """Per layer, the sliding window of its attention, where a family's layers differ (Gemma's local
        and global layers); None: every layer has cfg.sliding_window."""
        return None


@dataclass
class ModelConfig:
    arch: str
    n_layers: int
    dim: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    hidden_dim: int
    vocab_size: int
    context_length: int
    norm_eps: float
    rope_theta: float
    rope_pairs: str  # "adjacent" (GGUF llama: converter permuted Q/K rows) or "halves" (HF layout)
    rot_dim: int
    tie_embeddings: bool
    qkv_bias: bool = False
    rope_scaling: dict[str, Any] | None = None
    sliding_window: int | None = None
    activation: str = "silu"
    options: FamilyOptions | None = None  # what a family adds (models.gemma.GemmaOptions)
    # Phi-2 / StableLM / Mixtral switches (models/phi2.py, stablelm.py, mixtral.py).
    parallel_residual: bool = False  # x + attn(ln(x)) + mlp(ln(x)): one norm feeds both branches
    qk_norm: bool = False  # LayerNorm of each head of q and k before rotary
    n_experts: int = 0  # mixture of experts: experts per layer (0 = dense MLP)
    n_experts_used: int = 0  # ... of which the router picks this many per token

    def layer_windows(self) -> list[int | None]:
        """Per layer, how many positions back its attention sees (None: all): the KV caches follow it."""
        return (self.options and self.options.layer_windows(self)) or [self.sliding_window] * self.n_layers

    def inv_freq(self) -> list[float]:
        """Per-pair rotation frequencies, with rope scaling folded in (pure Python: runs in Pyodide)."""
        half = self.rot_dim // 2
        freqs = [1.0 / (self.rope_theta ** (2 * i / self.rot_dim)) for i in range(half)]
        sc = self.rope_scaling or {}
        kind = sc.get("rope_type") or sc.get("type")
        if kind == "linear":
            freqs = [f / float(sc["factor"]) for f in freqs]
        elif kind == "llama3":
            # Llama 3.1: keep high frequencies, divide low ones by `factor`, blend smoothly between.
            factor = float(sc["factor"])
            low, high = float(sc.get("low_freq_factor", 1.0)), float(sc.get("high_freq_factor", 4.0))
            old_ctx = float(sc.get("original_max_position_embeddings", 8192))
            low_wl, high_wl = old_ctx / low, old_ctx / high
            out = []
            for f in freqs:
                wl = 2 * math.pi / f
                if wl < high_wl:
                    out.append(f)
                elif wl > low_wl:
                    out.append(f / factor)
                else:
                    smooth = (old_ctx / wl - low) / (high - low)
                    out.append((1 - smooth) * f / factor + smooth * f)
            freqs = out
        elif kind not in (None, "default"):
            raise UnsupportedModelError(f"rope scaling type {kind!r} is not supported (supported: linear, llama3)")
        return freqs


# -- readers (the registry in models/families.py picks one per architecture) --------------------------
def read_gguf(meta: dict[str, Any], tensor_names: set[str], arch: str) -> ModelConfig:
    """llama.cpp's metadata of the Llama-like files (llama, mistral, qwen2; phi2, stablelm); a `llama`
    file with `llama.expert_count` is Mixtral."""
    m = ArchMeta(meta, arch)
    dim = int(m.need(LLM.EMBEDDING_LENGTH))
    n_heads = int(m.need(Attention.HEAD_COUNT))
    n_kv = int(m.need(Attention.HEAD_COUNT_KV, n_heads))
    head_dim = int(m.get(Attention.KEY_LENGTH, dim // n_heads))
    vocab = m.get(LLM.VOCAB_SIZE) or len(meta.get(Tokenizer.LIST, ()))
    scaling = None
    if m.get(Rope.SCALING_TYPE) == "linear":
        scaling = {"rope_type": "linear", "factor": float(m.need(Rope.SCALING_FACTOR))}
    rot = int(m.get(Rope.DIMENSION_COUNT, head_dim))
    n_experts = int(m.get(LLM.EXPERT_COUNT) or 0)
    layer_norm = arch in LAYER_NORM_ARCHS  # phi2 and stablelm use LayerNorm, with its own eps key
    eps = m.get(Attention.LAYERNORM_EPS if layer_norm else Attention.LAYERNORM_RMS_EPS)
    if arch == "phi2":
        parallel = True
    else:  # stablelm: written by the converter; older files tell by the missing second norm
        parallel = bool(m.get(LLM.USE_PARALLEL_RESIDUAL, "blk.0.ffn_norm.weight" not in tensor_names))
    return ModelConfig(
        arch="mixtral" if n_experts else arch,
        n_layers=int(m.need(LLM.BLOCK_COUNT)),
        dim=dim,
        n_heads=n_heads,
        n_kv_heads=n_kv,
        head_dim=head_dim,
        hidden_dim=int(m.need(LLM.FEED_FORWARD_LENGTH)),
        vocab_size=int(vocab),
        context_length=int(m.need(LLM.CONTEXT_LENGTH, 2048)),
        norm_eps=float(eps if eps is not None else 1e-5),
        rope_theta=float(m.need(Rope.FREQ_BASE, 10000.0)),
        # llama.cpp's converter permutes Q/K of llama/mistral so adjacent pairs rotate; qwen2, phi2 and
        # stablelm are stored unpermuted and llama.cpp rotates them in "neox" (half-split) mode.
        rope_pairs="adjacent" if arch in ("llama", "mistral") else "halves",
        rot_dim=rot,
        tie_embeddings="output.weight" not in tensor_names,
        qkv_bias="blk.0.attn_q.bias" in tensor_names,
        rope_scaling=scaling,
        sliding_window=m.get(Attention.SLIDING_WINDOW),
        activation="gelu_tanh" if arch == "phi2" else "silu",
        parallel_residual=layer_norm and parallel,
        qk_norm="blk.0.attn_q_norm.weight" in tensor_names,
        n_experts=n_experts,
        n_experts_used=int(m.get(LLM.EXPERT_USED_COUNT) or 0),
    )


def _whole(v: Any) -> int:
    """A size from config.json as an int: a fraction (head_dim 32.5) or a boolean is malformed, not truncated."""
    if isinstance(v, bool) or (isinstance(v, float) and not v.is_integer()):
        raise ValueError(f"{v!r} is not a whole number")
    return int(v)


def read_hf(cfg: dict[str, Any], arch: str) -> ModelConfig:
    """config.json of the Llama-like families (Llama, Mistral, Qwen2, Phi-2, StableLM, Mixtral)."""
    try:
        dim = _whole(cfg["hidden_size"])
        n_heads = _whole(cfg["num_attention_heads"])
        head_dim = _whole(cfg.get("head_dim") or dim // n_heads)
        n_layers, hidden = _whole(cfg["num_hidden_layers"]), _whole(cfg["intermediate_size"])
        vocab = _whole(cfg["vocab_size"])
    except KeyError as e:
        raise ModelFormatError(f"config.json lacks {e.args[0]!r}, which a {arch} model needs") from None
    except (TypeError, ValueError) as e:
        raise ModelFormatError(f"config.json has a malformed size ({e})") from None
    # transformers >= 5 writes rope settings as one `rope_parameters` dict (theta inside);
    # earlier versions as `rope_theta` + `rope_scaling`.
    rope = cfg.get("rope_parameters") or {}
    scaling = cfg.get("rope_scaling") or (rope if rope.get("rope_type", "default") != "default" else None)
    act = cfg.get("hidden_act", "silu")
    if act not in HF_ACT:
        raise UnsupportedModelError(f"activation {act!r} is not supported for {arch} (supported: {sorted(HF_ACT)})")
    # Phi-2 / StableLM rotate only the first partial_rotary_factor of each head.
    partial = float(rope.get("partial_rotary_factor") or cfg.get("partial_rotary_factor") or 1.0)
    rot_dim = int(head_dim * partial)
    if rot_dim % 2 or rot_dim < 2:
        raise ModelFormatError(
            f"partial_rotary_factor {partial} leaves {rot_dim} rotary dims of {head_dim}; need an even number"
        )
    layer_norm_eps = cfg.get("layer_norm_eps")  # Phi-2 and StableLM (LayerNorm) say eps this way
    return ModelConfig(
        arch=arch,
        n_layers=n_layers,
        dim=dim,
        n_heads=n_heads,
        n_kv_heads=_whole(cfg.get("num_key_value_heads") or n_heads),
        head_dim=head_dim,
        hidden_dim=hidden,
        vocab_size=vocab,
        context_length=_whole(cfg.get("max_position_embeddings", 2048)),
        norm_eps=float(layer_norm_eps if layer_norm_eps is not None else cfg.get("rms_norm_eps", 1e-6)),
        rope_theta=float(rope.get("rope_theta") or cfg.get("rope_theta") or 10000.0),
        rope_pairs="halves",
        rot_dim=rot_dim,
        tie_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        # Qwen2 always has Q/K/V biases; Llama's `attention_bias` adds them to Q/K/V and O. The graph
        # adds any bias tensor the checkpoint holds, so this flag only describes the model.
        qkv_bias=arch == "qwen2" or bool(cfg.get("attention_bias")),
        rope_scaling=scaling,
        sliding_window=cfg.get("sliding_window")
        if cfg.get("use_sliding_window", arch in ("mistral", "mixtral"))
        else None,
        activation=HF_ACT[act],
        parallel_residual=arch == "phi2" or bool(cfg.get("use_parallel_residual")),
        qk_norm=bool(cfg.get("qk_layernorm")),
        n_experts=int(cfg.get("num_local_experts") or 0),
        n_experts_used=int(cfg.get("num_experts_per_tok") or 0),
    )


# -- validation ---------------------------------------------------------------------------------------
# Sane bounds on hyper-parameters, far above any released model, checked before anything is allocated
# (a hostile file otherwise makes the KV cache and scratch buffers as large as it says).
MAX_WIDTH = 1 << 20  # dim, hidden_dim, head_dim
MAX_VOCAB = 1 << 24
MAX_TENSOR_DIM = 1 << 32  # any one dimension of a stored tensor
_LAYER = re.compile(r"(?:^|\.)(?:blk|layers|h)\.(\d+)\.")
# Layer-0 tensors whose shape the config determines: (GGUF name, HF name) -> expected hf_shape.
_SHAPES = (
    (("blk.0.attn_q.weight", "model.layers.0.self_attn.q_proj.weight"), lambda c: (c.n_heads * c.head_dim, c.dim)),
    (("blk.0.attn_k.weight", "model.layers.0.self_attn.k_proj.weight"), lambda c: (c.n_kv_heads * c.head_dim, c.dim)),
    (("blk.0.attn_v.weight", "model.layers.0.self_attn.v_proj.weight"), lambda c: (c.n_kv_heads * c.head_dim, c.dim)),
    (
        ("blk.0.ffn_up.weight", "model.layers.0.mlp.up_proj.weight", "model.layers.0.mlp.fc1.weight"),
        lambda c: (c.hidden_dim, c.dim),
    ),
    (
        ("blk.0.ffn_down.weight", "model.layers.0.mlp.down_proj.weight", "model.layers.0.mlp.fc2.weight"),
        lambda c: (c.dim, c.hidden_dim),
    ),
    (("blk.0.attn_norm.weight", "model.layers.0.input_layernorm.weight"), lambda c: (c.dim,)),
)
_EMBEDDING = ("token_embd.weight", "model.embed_tokens.weight")


def validate_config(cfg: ModelConfig, tensors: dict[str, Any]) -> None:
    """Check every hyper-parameter against sane bounds and against the tensors present, so that a
    malformed or hostile file is refused with ModelFormatError before anything is allocated from it.
    `tensors`: name -> TensorInfo (GGUF or Hugging Face names). Runs in O(number of tensors)."""

    def bad(msg: str) -> ModelFormatError:
        return ModelFormatError(f"model metadata is inconsistent: {msg}; the file is corrupt or not a supported model.")

    for name in ("n_layers", "dim", "n_heads", "n_kv_heads", "head_dim", "hidden_dim", "vocab_size", "context_length"):
        v = getattr(cfg, name)
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise bad(f"{name} is {v!r}, must be a positive integer")
    for name, limit in (
        ("dim", MAX_WIDTH),
        ("hidden_dim", MAX_WIDTH),
        ("head_dim", MAX_WIDTH),
        ("vocab_size", MAX_VOCAB),
    ):
        if getattr(cfg, name) > limit:
            raise bad(f"{name} {getattr(cfg, name)} exceeds {limit}")
    if cfg.n_heads % cfg.n_kv_heads:
        raise bad(f"{cfg.n_heads} attention heads are not a multiple of {cfg.n_kv_heads} KV heads")
    if cfg.rot_dim < 2 or cfg.rot_dim % 2 or cfg.rot_dim > cfg.head_dim:
        raise bad(f"rotary dimension {cfg.rot_dim} must be even and within 2..head_dim ({cfg.head_dim})")
    if not (cfg.norm_eps >= 0 and math.isfinite(cfg.norm_eps)) or not (
        cfg.rope_theta > 0 and math.isfinite(cfg.rope_theta)
    ):
        raise bad(f"norm epsilon {cfg.norm_eps} / rope base {cfg.rope_theta} out of range")
    try:  # rope scaling is read here, not first when the model is built (after the device and weights)
        freqs = cfg.inv_freq()
    except (TypeError, ValueError, KeyError, AttributeError, ZeroDivisionError, OverflowError) as e:
        raise bad(f"rope scaling {cfg.rope_scaling!r} is malformed ({type(e).__name__}: {e})") from None
    if not all(math.isfinite(f) and f > 0 for f in freqs):
        raise bad(f"rope scaling {cfg.rope_scaling!r} gives rotation frequencies that are not finite and positive")
    for t in tensors.values():
        if not t.shape or any(not 1 <= d <= MAX_TENSOR_DIM for d in t.shape):
            raise bad(f"tensor '{t.name}' has shape {list(t.shape)}")
    layers = {int(m.group(1)) for m in map(_LAYER.search, tensors) if m}
    if cfg.n_layers != len(layers) or layers != set(range(cfg.n_layers)):
        missing = min(set(range(min(cfg.n_layers, len(layers) + 1))) - layers, default=None)
        raise bad(
            f"block count {cfg.n_layers}, but the file holds tensors of {len(layers)} layers"
            + (f" (no tensor of layer {missing})" if missing is not None else "")
        )
    # (once the layer count matches the tensors: the list holds a window a layer)
    for w in set(cfg.layer_windows()):
        if w is not None and (not isinstance(w, int) or isinstance(w, bool) or w < 0):  # 0: none, as llama.cpp
            raise bad(f"sliding window {w!r} must be a whole number of positions")
    for names, want in _SHAPES:
        for n in names:
            if n in tensors and tuple(tensors[n].hf_shape) != want(cfg):
                raise bad(f"'{n}' has shape {list(tensors[n].hf_shape)}, the metadata implies {list(want(cfg))}")
    for n in _EMBEDDING:
        if n in tensors:
            rows, cols = (tuple(tensors[n].hf_shape) + (0, 0))[:2]
            if cols != cfg.dim or rows < cfg.vocab_size:
                raise bad(
                    f"'{n}' has shape {[rows, cols]}, too small for vocabulary {cfg.vocab_size} x width {cfg.dim}"
                )
