"""The Gemma family: Gemma (1), Gemma 2 and Gemma 3 (text), one graph with the switches between them.

    x = embed(tokens) * sqrt(dim)
    for each layer (local: sliding window + local rope; global: full attention + global rope):
        h = rmsnorm(x)
        q, k, v = h Wq, h Wk, h Wv
        q, k = rmsnorm_per_head(q), rmsnorm_per_head(k)        # Gemma 3
        q, k = rope(q, k)
        o = attention(q * scale, k, v)                          # scale = query_pre_attn_scalar^-1/2,
                                                                # scores capped softcap*tanh(s/softcap) (Gemma 2)
        x = x + rmsnorm(o Wo)                                   # Gemma 2/3 ("sandwich"); Gemma 1: x + o Wo
        h = rmsnorm(x)
        y = (gelu_tanh(h Wgate) * (h Wup)) Wdown                # GeGLU
        x = x + rmsnorm(y)                                      # Gemma 2/3; Gemma 1: x + y
    logits = rmsnorm(x[last]) Wembed                            # tied head
    logits = cap * tanh(logits / cap)                           # final softcap, if the model has one

Every rmsnorm multiplies by (1 + w): Hugging Face checkpoints store w, llama.cpp's converter stores
w + 1 (so GGUF norms take offset 0). Layer types follow transformers: Gemma 2 alternates local and
global layers, Gemma 3 has five local layers to each global one; checkpoints may list them. Local and
global layers keep K/V in caches of their own (kv_cache.KVCaches, by window): the local layers' holds
the window per sequence, not the whole context.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

from ..attention import PagedAttention
from ..errors import ModelFormatError, UnsupportedModelError
from ..gpu import Buffer, Device
from ..kv_cache import KVCaches
from ..linear import Embedding, Linear
from ..planner import DEFAULT_POLICY, KernelPolicy, prestage_auto
from ..ops import GLU, RMSNorm, RoPE, Softcap
from ..formats.gguf_keys import LLM, ArchMeta, Attention, Rope, Tokenizer
from .config import FamilyOptions, ModelConfig
from .layer import Decoder, Layer, LayerWeights, Named
from .llama import RunState
from .store import WeightStore

# Every n-th layer is global, the rest local, when a checkpoint does not list its layer types.
SLIDING_PATTERN = {"gemma2": 2, "gemma3": 6}
GEMMA3_LOCAL_THETA = 10000.0  # llama.cpp and transformers' default for Gemma 3's local layers


@dataclass(frozen=True)
class GemmaOptions(FamilyOptions):
    """What Gemma adds to ModelConfig (its `options`)."""

    norm_offset: float  # rmsnorm multiplies by (w + norm_offset): 1 for HF, 0 for GGUF
    embed_scale: float  # sqrt(dim)
    attn_scale: float  # query_pre_attn_scalar ** -0.5
    sandwich: bool  # Gemma 2/3: norms after attention and after the MLP too
    local_layers: tuple[bool, ...]  # per layer: sliding-window attention with the local rope
    local_theta: float  # rope base of local layers (Gemma 3; Gemma 2 uses one base)
    local_rope_scaling: dict | None = None
    attn_softcap: float | None = None  # Gemma 2
    final_softcap: float | None = None  # Gemma 2 (and Gemma 3 if set)

    def layer_windows(self, cfg: ModelConfig) -> list[int | None]:
        return [cfg.sliding_window if local else None for local in self.local_layers]


def options(cfg: ModelConfig) -> GemmaOptions:
    if not isinstance(cfg.options, GemmaOptions):
        raise UnsupportedModelError(f"a {cfg.arch} config without Gemma's options")
    return cfg.options


def _layer_types(arch: str, n_layers: int, window: int | None, pattern: Any = None) -> tuple[bool, ...]:
    """Which layers are local. `pattern` is a checkpoint's own statement: a list (per layer: True/
    "sliding_attention" = local) or an int n (every n-th layer global)."""
    if arch == "gemma" or not window:
        return (False,) * n_layers
    if isinstance(pattern, (list, tuple)):
        if len(pattern) != n_layers:
            raise ModelFormatError(f"the checkpoint lists {len(pattern)} layer types for {n_layers} layers")
        return tuple(p is True or p == "sliding_attention" for p in pattern)
    n = int(pattern or SLIDING_PATTERN[arch])
    return tuple(bool((i + 1) % n) for i in range(n_layers))


def config_from_gguf(meta: dict[str, Any], tensor_names: set[str], arch: str) -> ModelConfig:
    """llama.cpp's metadata for gemma/gemma2/gemma3 files. GGUF keeps no query_pre_attn_scalar:
    llama.cpp uses dim / n_heads for the 27B models (the only ones where it differs from head_dim) and
    head_dim otherwise, telling the 27B by its layer count."""
    m = ArchMeta(meta, arch)
    dim, n_layers = int(m.need(LLM.EMBEDDING_LENGTH)), int(m.need(LLM.BLOCK_COUNT))
    n_heads = int(m.need(Attention.HEAD_COUNT))
    head_dim = int(m.get(Attention.KEY_LENGTH, dim // n_heads))
    window = m.get(Attention.SLIDING_WINDOW) if arch != "gemma" else None
    is_27b = (arch, n_layers) in (("gemma2", 46), ("gemma3", 62))
    scaling = None
    if m.get(Rope.SCALING_TYPE) == "linear":  # Gemma 3 4B+: global layers only
        scaling = {"rope_type": "linear", "factor": float(m.need(Rope.SCALING_FACTOR))}
    opts = GemmaOptions(
        norm_offset=0.0,
        embed_scale=math.sqrt(dim),
        attn_scale=(dim / n_heads if is_27b else head_dim) ** -0.5,
        sandwich=arch != "gemma",
        local_layers=_layer_types(arch, n_layers, window, m.get(Attention.SLIDING_WINDOW_PATTERN)),
        local_theta=float(
            m.get(Rope.FREQ_BASE_SWA) or (GEMMA3_LOCAL_THETA if arch == "gemma3" else m.need(Rope.FREQ_BASE, 10000.0))
        ),
        attn_softcap=m.get(LLM.ATTN_LOGIT_SOFTCAPPING) if arch == "gemma2" else None,
        final_softcap=m.get(LLM.FINAL_LOGIT_SOFTCAPPING),
    )
    vocab = m.get(LLM.VOCAB_SIZE) or len(meta.get(Tokenizer.LIST, ()))
    return ModelConfig(
        arch=arch,
        n_layers=n_layers,
        dim=dim,
        n_heads=n_heads,
        n_kv_heads=int(m.need(Attention.HEAD_COUNT_KV, n_heads)),
        head_dim=head_dim,
        hidden_dim=int(m.need(LLM.FEED_FORWARD_LENGTH)),
        vocab_size=int(vocab),
        context_length=int(m.need(LLM.CONTEXT_LENGTH, 8192)),
        norm_eps=float(m.need(Attention.LAYERNORM_RMS_EPS, 1e-6)),
        rope_theta=float(m.need(Rope.FREQ_BASE, 10000.0)),
        rope_pairs="halves",  # llama.cpp leaves Gemma's Q/K unpermuted and rotates them in NEOX mode
        rot_dim=head_dim,
        tie_embeddings="output.weight" not in tensor_names,
        rope_scaling=scaling,
        sliding_window=int(window) if window else None,
        activation="gelu_tanh",
        qk_norm="blk.0.attn_q_norm.weight" in tensor_names,
        options=opts,
    )


def config_from_hf(cfg: dict[str, Any], arch: str) -> ModelConfig:
    """config.json of GemmaForCausalLM / Gemma2ForCausalLM / Gemma3ForCausalLM (transformers 4 or 5)."""
    try:
        dim, n_layers = int(cfg["hidden_size"]), int(cfg["num_hidden_layers"])
        n_heads, hidden, vocab = int(cfg["num_attention_heads"]), int(cfg["intermediate_size"]), int(cfg["vocab_size"])
        head_dim = int(cfg.get("head_dim") or dim // n_heads)
    except KeyError as e:
        raise ModelFormatError(f"config.json lacks {e.args[0]!r}, which a {arch} model needs") from None
    except (TypeError, ValueError) as e:
        raise ModelFormatError(f"config.json has a malformed size ({e})") from None
    act = cfg.get("hidden_activation") or cfg.get("hidden_act") or "gelu_pytorch_tanh"
    # Gemma 1 configs say "gelu" and transformers runs it as the tanh approximation.
    if act not in ("gelu_pytorch_tanh", "gelu_new", "gelu"):
        raise UnsupportedModelError(f"activation {act!r} is not supported for {arch} (supported: gelu_pytorch_tanh)")
    if cfg.get("use_bidirectional_attention"):
        raise UnsupportedModelError(f"{arch} with bidirectional attention (an embedding model) is not a causal LM")
    # Rope: transformers 5 writes `rope_parameters`, per layer type for Gemma 3; version 4 wrote
    # rope_theta (+ rope_local_base_freq for Gemma 3) and rope_scaling (global layers only).
    rope = cfg.get("rope_parameters") or {}
    glob = rope.get("full_attention", rope) if arch == "gemma3" else rope
    local = rope.get("sliding_attention", {}) if arch == "gemma3" else glob
    theta = float(glob.get("rope_theta") or cfg.get("rope_theta") or (1e6 if arch == "gemma3" else 10000.0))
    local_theta = float(
        local.get("rope_theta")
        or cfg.get("rope_local_base_freq")
        or (GEMMA3_LOCAL_THETA if arch == "gemma3" else theta)
    )
    scaled = lambda p: p if p.get("rope_type", "default") != "default" else None
    scaling = cfg.get("rope_scaling") or scaled(glob)
    window = cfg.get("sliding_window") if arch != "gemma" else None
    softcap = lambda key: float(cfg[key]) if cfg.get(key) else None
    opts = GemmaOptions(
        norm_offset=1.0,
        embed_scale=math.sqrt(dim),
        attn_scale=float(cfg.get("query_pre_attn_scalar") or head_dim) ** -0.5 if arch != "gemma" else head_dim**-0.5,
        sandwich=arch != "gemma",
        local_layers=_layer_types(arch, n_layers, window, cfg.get("layer_types") or cfg.get("sliding_window_pattern")),
        local_theta=local_theta,
        local_rope_scaling=scaled(local) if arch == "gemma3" else scaling,
        # transformers' Gemma 3 does not apply attn_logit_softcapping even when set; Gemma 2 does.
        attn_softcap=softcap("attn_logit_softcapping") if arch == "gemma2" else None,
        final_softcap=softcap("final_logit_softcapping") if arch != "gemma" else None,
    )
    return ModelConfig(
        arch=arch,
        n_layers=n_layers,
        dim=dim,
        n_heads=n_heads,
        n_kv_heads=int(cfg.get("num_key_value_heads") or n_heads),
        head_dim=head_dim,
        hidden_dim=hidden,
        vocab_size=vocab,
        context_length=int(cfg.get("max_position_embeddings", 8192)),
        norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
        rope_theta=theta,
        rope_pairs="halves",
        rot_dim=head_dim,
        tie_embeddings=bool(cfg.get("tie_word_embeddings", True)),
        rope_scaling=scaling,
        sliding_window=int(window) if window else None,
        activation="gelu_tanh",
        qk_norm=arch == "gemma3",
        options=opts,
    )


@dataclass
class GemmaState(RunState):
    """Llama's activations plus y, a sub-block's output before its post-norm (Gemma 2/3)."""

    y: Buffer  # [T, dim]

    @classmethod
    def allocate(cls, device: Device, cfg: ModelConfig, max_tokens: int) -> "GemmaState":
        base = RunState.allocate(device, cfg, max_tokens)
        return cls(**vars(base), y=device.create_buffer(max_tokens * cfg.dim * 4, "y"))


def gemma_layer(b: LayerWeights, cfg: ModelConfig, s: GemmaState, rope: RoPE, attention: PagedAttention) -> Named:
    """Layer b.i in run order (the fusion pass, models/layer.py, then fuses Q/K/V, gate/up and the norms)."""
    o = options(cfg)
    ops: Named = [
        ("attn_norm", b.rmsnorm("attn_norm", s.x, s.h)),  # h = rmsnorm(x)
        ("wq", b.linear("attn_q", s.h, s.q_proj)),  # q, k, v = h Wq, h Wk, h Wv
        ("wk", b.linear("attn_k", s.h, s.k_proj)),
        ("wv", b.linear("attn_v", s.h, s.v)),
    ]
    if cfg.qk_norm:  # Gemma 3: q, k = rmsnorm_per_head(q), rmsnorm_per_head(k)
        ops += [
            ("q_norm", b.rmsnorm("attn_q_norm", s.q_proj, s.q, cfg.head_dim, rows_per_token=cfg.n_heads)),
            ("k_norm", b.rmsnorm("attn_k_norm", s.k_proj, s.k, cfg.head_dim, rows_per_token=cfg.n_kv_heads)),
        ]
    ops += [
        ("rope", rope.bind(s.q, s.k, s.step)),  # q, k = rope(q, k)
        ("attention", attention.bind(b.i, s.q, s.k, s.v, s.o, s.step)),
    ]
    if o.sandwich:  # x += rmsnorm(o Wo)
        ops += [
            ("wo", b.linear("attn_output", s.o, s.y)),
            ("post_attention_norm", b.rmsnorm("post_attention_norm", s.y, s.x, accumulate=True)),
        ]
    else:  # x += o Wo
        ops += [("wo", b.linear("attn_output", s.o, s.x, accumulate=True))]
    ops += [
        ("ffn_norm", b.rmsnorm("ffn_norm", s.x, s.h)),  # h = rmsnorm(x)
        ("w_gate", b.linear("ffn_gate", s.h, s.gate)),  # y = (gelu_tanh(h Wgate) * (h Wup)) Wdown
        ("w_up", b.linear("ffn_up", s.h, s.up)),
        ("glu", GLU(b.device, cfg.hidden_dim, cfg.activation).bind(s.gate, s.up, s.act, s.step)),
    ]
    if o.sandwich:  # x += rmsnorm(y)
        ops += [
            ("w_down", b.linear("ffn_down", s.act, s.y)),
            ("post_ffw_norm", b.rmsnorm("post_ffw_norm", s.y, s.x, accumulate=True)),
        ]
    else:  # x += y
        ops += [("w_down", b.linear("ffn_down", s.act, s.x, accumulate=True))]
    return ops


class GemmaModel(Decoder):
    def __init__(
        self,
        device: Device,
        cfg: ModelConfig,
        weights: WeightStore,
        cache: KVCaches,
        max_tokens: int = 64,
        policy: KernelPolicy = DEFAULT_POLICY,
    ):
        o = options(cfg)
        if policy.prestage is None:  # Gemma 1's residual adds are matvecs (link_emits); Gemma 2/3's are norms
            policy = replace(policy, prestage=prestage_auto(cfg.dim, dense_mlp=not o.sandwich))
        self.device, self.cfg, self.cache, self.max_tokens, self.policy = device, cfg, cache, max_tokens, policy
        s = self.state = GemmaState.allocate(device, cfg, max_tokens)
        # The 262k-row table may exceed one storage binding: then it is split in row blocks
        # (WeightStore.matrix), looked up block by block and, as the tied head, multiplied block by block.
        self.embed = Embedding(device, weights.matrix("token_embd.weight"), scale=o.embed_scale).bind(s.ids, s.x)

        def rope(theta: float, scaling: dict | None) -> RoPE:
            freqs = replace(cfg, rope_theta=theta, rope_scaling=scaling).inv_freq()
            return RoPE(device, freqs, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.rope_pairs)

        def attention(window: int | None) -> PagedAttention:
            return PagedAttention(
                device,
                cache[window],
                cfg.n_heads,
                cfg.n_kv_heads,
                cfg.head_dim,
                max_tokens,
                sliding_window=window,
                scale=o.attn_scale,
                softcap=o.attn_softcap,
                policy=policy,
            )

        # (rope, attention) of the global layers (False) and the local ones (True) the model has, each
        # attention over its window's cache
        kinds: dict[bool, tuple[RoPE, PagedAttention]] = {}
        if not all(o.local_layers):
            kinds[False] = (rope(cfg.rope_theta, cfg.rope_scaling), attention(None))
        if any(o.local_layers):
            kinds[True] = (rope(o.local_theta, o.local_rope_scaling), attention(cfg.sliding_window))
        self.layers = [
            Layer(
                gemma_layer(
                    LayerWeights(device, cfg, weights, i, s.step, policy, o.norm_offset),
                    cfg,
                    s,
                    *kinds[o.local_layers[i]],
                )
            )
            for i in range(cfg.n_layers)
        ]
        self.final_norm = RMSNorm(
            device, weights.vector("output_norm.weight"), cfg.dim, cfg.norm_eps, weight_offset=o.norm_offset
        ).bind(s.x, s.last, s.step, last_only=True)
        head = weights.matrix("token_embd.weight" if cfg.tie_embeddings else "output.weight")
        self.lm_head = Linear(device, head, policy=policy).bind(s.last, s.logits, None)
        self.softcap = Softcap(device, cfg.vocab_size, o.final_softcap).bind(s.logits) if o.final_softcap else None
        self.link_emits()
