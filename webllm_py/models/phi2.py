"""Phi-2 (PhiForCausalLM): attention and MLP side by side, fed by one LayerNorm.

    x = embed(tokens)
    for each layer:
        h = layernorm(x) * w + b
        q, k, v = h Wq + bq, h Wk + bk, h Wv + bv
        q, k = layernorm_per_head(q), layernorm_per_head(k)     # only with qk_layernorm
        q, k = rope(q, k) on the first rot_dim of each head     # partial rotary
        x = x + attention(q, k, v) Wdense + bdense
              + gelu_tanh(h W1 + b1) W2 + b2                    # same h: the parallel residual
    logits = layernorm(x[last]) Wout + bout

The run state, rotary, paged attention and linear layers are the Llama family's (models/llama.py);
what differs is the norm (LayerNorm with bias), the biases everywhere, the partial rotary, and the
MLP on the same normed input as attention. StableLM (models/stablelm.py) is this layer with its own MLP.
"""

from __future__ import annotations

from ..attention import PagedAttention
from ..gpu import Buffer, Device
from ..kv_cache import KVCaches
from ..linear import BoundLinear, Embedding, Linear
from ..planner import DEFAULT_POLICY, KernelPolicy
from ..ops import Activation, LayerNorm, RoPE
from .config import ModelConfig
from .layer import Decoder, Layer, LayerWeights, Named
from .llama import MLP, RunState, rope_and_attention
from .store import WeightStore


def head_norm(device: Device, cfg: ModelConfig, w: WeightStore, name: str, n_heads: int) -> tuple[LayerNorm, bool]:
    """The LayerNorm of each head of q (or k), and whether each head has its own weight row.
    Phi-2 shares one [head_dim] weight and bias across heads; StableLM has one weight per head, which
    GGUF stores stacked as `name.weight` [n_heads * head_dim] and Hugging Face as `name.{h}.weight`."""
    if w.has(name + ".weight"):
        weight = w.vector(name + ".weight")
        per_head = w.tensors[name + ".weight"].n_elements == n_heads * cfg.head_dim
    else:
        weight = w.stacked_vector([f"{name}.{h}.weight" for h in range(n_heads)], name + ".weight")
        per_head = True
    bias = w.vector(name + ".bias") if w.has(name + ".bias") else None
    return LayerNorm(device, weight, cfg.head_dim, cfg.norm_eps, bias), per_head


def projection(b: LayerWeights, cfg: ModelConfig, s: RunState, name: str, y: Buffer) -> BoundLinear:
    """y = h W + b for name in attn_q/k/v. llama.cpp's Phi-2 files hold the three as one fused
    `attn_qkv` matrix [q_dim + 2 kv_dim, dim] (and bias): its rows are split at upload."""
    w, fused = b.w, b.name("attn_qkv")
    if not w.has(fused + ".weight"):
        return b.linear(name, s.h, y)
    q, kv = cfg.n_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim
    r0, r1 = {"attn_q": (0, q), "attn_k": (q, q + kv), "attn_v": (q + kv, q + 2 * kv)}[name]
    weight = w.row_slice(fused + ".weight", r0, r1, b.name(name + ".weight"))
    bias = w.row_slice(fused + ".bias", r0, r1, b.name(name + ".bias")) if w.has(fused + ".bias") else None
    return b.linear(name, s.h, y, weight=weight, bias=bias)


def gelu_mlp(b: LayerWeights, cfg: ModelConfig, s: RunState) -> Named:
    """x += gelu_tanh(h W1 + b1) W2 + b2, reading the h the attention read."""
    return [
        ("fc1", b.linear("ffn_up", s.h, s.up)),
        ("act", Activation(b.device, cfg.hidden_dim, cfg.activation).bind(s.up, s.act, s.step)),
        ("fc2", b.linear("ffn_down", s.act, s.x, accumulate=True)),
    ]


def phi2_layer(
    b: LayerWeights, cfg: ModelConfig, s: RunState, rope: RoPE, attention: PagedAttention, mlp: MLP = gelu_mlp
) -> Named:
    """Layer b.i in run order: attention and the MLP both read h = layernorm(x) (the fusion pass,
    models/layer.py, then fuses Q/K/V)."""
    ops: Named = [
        ("attn_norm", b.layernorm("attn_norm", s.x, s.h)),  # h = layernorm(x) * w + b
        ("wq", projection(b, cfg, s, "attn_q", s.q_proj)),  # q, k, v = h Wq + bq, ...
        ("wk", projection(b, cfg, s, "attn_k", s.k_proj)),
        ("wv", projection(b, cfg, s, "attn_v", s.v)),
    ]
    if cfg.qk_norm:  # q, k = layernorm_per_head(q), layernorm_per_head(k)
        for name, src, dst, heads in (
            ("attn_q_norm", s.q_proj, s.q, cfg.n_heads),
            ("attn_k_norm", s.k_proj, s.k, cfg.n_kv_heads),
        ):
            op, per_head = head_norm(b.device, cfg, b.w, b.name(name), heads)
            ops.append((name, op.bind(src, dst, s.step, rows_per_token=heads, per_row_weight=per_head)))
    return ops + [
        ("rope", rope.bind(s.q, s.k, s.step)),  # partial rotary: rot_dim of each head
        ("attention", attention.bind(b.i, s.q, s.k, s.v, s.o, s.step)),
        ("wo", b.linear("attn_output", s.o, s.x, accumulate=True)),  # x += o Wdense + bdense
        *mlp(b, cfg, s),  # x += mlp(h)
    ]


class Phi2Model(Decoder):
    """Llama's run state and rotary; LayerNorms with bias and a biased head."""

    def __init__(
        self,
        device: Device,
        cfg: ModelConfig,
        weights: WeightStore,
        cache: KVCaches,
        max_tokens: int = 64,
        policy: KernelPolicy = DEFAULT_POLICY,
        mlp: MLP = gelu_mlp,
    ):
        """mlp: each layer's MLP (StableLM: Llama's SwiGLU)."""
        self.device, self.cfg, self.cache, self.max_tokens, self.policy = device, cfg, cache, max_tokens, policy
        s = self.state = RunState.allocate(device, cfg, max_tokens)
        self.embed = Embedding(device, weights.matrix("token_embd.weight")).bind(s.ids, s.x)
        rope, attention = rope_and_attention(device, cfg, cache, max_tokens, policy)
        self.layers = [
            Layer(phi2_layer(LayerWeights(device, cfg, weights, i, s.step, policy), cfg, s, rope, attention, mlp))
            for i in range(cfg.n_layers)
        ]
        bias = weights.vector("output_norm.bias") if weights.has("output_norm.bias") else None
        self.final_norm = LayerNorm(device, weights.vector("output_norm.weight"), cfg.dim, cfg.norm_eps, bias).bind(
            s.x, s.last, s.step, last_only=True
        )
        head = weights.matrix("token_embd.weight" if cfg.tie_embeddings else "output.weight")
        self.lm_head = Linear(device, head, weights.bias("output.bias"), policy=policy).bind(s.last, s.logits, None)
