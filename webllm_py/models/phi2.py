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
MLP on the same normed input as attention. StableLM (models/stablelm.py) reuses this layer's attention.
"""
from __future__ import annotations

from ..attention import PagedAttention
from ..gpu import Buffer, Device, Recorder
from ..kv_cache import PagedKVCache
from ..linear import Embedding, Linear, MatvecGroup
from ..planner import DEFAULT_POLICY, KernelPolicy
from ..ops import Activation, LayerNorm, RoPE
from .config import ModelConfig
from .llama import LlamaModel, RunState
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


class Phi2Layer:
    def __init__(self, device: Device, cfg: ModelConfig, w: WeightStore, i: int, s: RunState, rope: RoPE,
                 attention: PagedAttention, raw: tuple[Buffer, Buffer] | None, policy: KernelPolicy = DEFAULT_POLICY):
        self.device, self.cfg, self.w, self.i, self.s, self.policy = device, cfg, w, i, s, policy
        self.attn_norm = self.norm("attn_norm").bind(s.x, s.h, s.step)
        # With q/k norms the projections land in scratch rows `raw` and the norms write q and k.
        q_out, k_out = raw if cfg.qk_norm and raw else (s.q, s.k)
        self.wq = self.projection("attn_q", q_out)
        self.wk = self.projection("attn_k", k_out)
        self.wv = self.projection("attn_v", s.v)
        self.qkv = MatvecGroup([self.wq, self.wk, self.wv])  # one decode dispatch where the matvec kernel can fuse them
        self.qk_norms = []
        if cfg.qk_norm:
            for name, src, dst, heads in (("attn_q_norm", q_out, s.q, cfg.n_heads), ("attn_k_norm", k_out, s.k, cfg.n_kv_heads)):
                op, per_head = head_norm(device, cfg, w, f"blk.{i}.{name}", heads)
                self.qk_norms.append(op.bind(src, dst, s.step, rows_per_token=heads, per_row_weight=per_head))
        self.rope = rope.bind(s.q, s.k, s.step)
        self.attention = attention.bind(i, s.q, s.k, s.v, s.o, s.step, s.table)
        self.wo = self.linear("attn_output", s.o, s.x, accumulate=True)   # x += o Wdense + bdense
        self.ffn = self.feed_forward()

    def norm(self, name: str) -> LayerNorm:
        blk = f"blk.{self.i}.{name}"
        bias = self.w.vector(blk + ".bias") if self.w.has(blk + ".bias") else None
        return LayerNorm(self.device, self.w.vector(blk + ".weight"), self.cfg.dim, self.cfg.norm_eps, bias)

    def linear(self, name: str, x: Buffer, y: Buffer, accumulate: bool = False):
        blk = f"blk.{self.i}.{name}"
        return Linear(self.device, self.w.matrix(blk + ".weight"), self.w.bias(blk + ".bias"), policy=self.policy).bind(
            x, y, self.s.step, accumulate=accumulate)

    def projection(self, name: str, y: Buffer):
        """y = h W + b for name in attn_q/k/v. llama.cpp's Phi-2 files hold the three as one fused
        `attn_qkv` matrix [q_dim + 2 kv_dim, dim] (and bias): its rows are split at upload."""
        cfg, w, i = self.cfg, self.w, self.i
        fused = f"blk.{i}.attn_qkv"
        if not w.has(fused + ".weight"):
            return self.linear(name, self.s.h, y)
        q, kv = cfg.n_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim
        r0, r1 = {"attn_q": (0, q), "attn_k": (q, q + kv), "attn_v": (q + kv, q + 2 * kv)}[name]
        weight = w.row_slice(fused + ".weight", r0, r1, f"blk.{i}.{name}.weight")
        bias = w.row_slice(fused + ".bias", r0, r1, f"blk.{i}.{name}.bias") if w.has(fused + ".bias") else None
        return Linear(self.device, weight, bias, policy=self.policy).bind(self.s.h, y, self.s.step)

    def feed_forward(self) -> list:
        """x += gelu_tanh(h W1 + b1) W2 + b2, reading the h the attention read."""
        s = self.s
        self.fc1 = self.linear("ffn_up", s.h, s.up)
        self.act = Activation(self.device, self.cfg.hidden_dim, self.cfg.activation).bind(s.up, s.act, s.step)
        self.fc2 = self.linear("ffn_down", s.act, s.x, accumulate=True)
        return [self.fc1, self.act, self.fc2]

    def record(self, rec: Recorder, n: int) -> None:
        for op in (self.attn_norm, self.qkv, *self.qk_norms, self.rope, self.attention, self.wo, *self.ffn):
            op.record(rec, n)


class Phi2Model(LlamaModel):
    """Its own graph (LayerNorms with bias, biased head) recorded by LlamaModel's `record` and
    `record_head`: embed, every layer, then the final norm and the head."""
    layer_class = Phi2Layer

    def __init__(self, device: Device, cfg: ModelConfig, weights: WeightStore, cache: PagedKVCache,
                 max_tokens: int = 64, policy: KernelPolicy = DEFAULT_POLICY):
        self.device, self.cfg, self.cache, self.max_tokens, self.policy = device, cfg, cache, max_tokens, policy
        s = self.state = RunState.allocate(device, cfg, max_tokens, cache.max_blocks_per_seq)
        raw = None
        if cfg.qk_norm:  # q and k before their norms
            q_dim, kv_dim = cfg.n_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim
            raw = (device.create_buffer(4 * max_tokens * q_dim, "q_raw"),
                   device.create_buffer(4 * max_tokens * kv_dim, "k_raw"))
        self.embed = Embedding(device, weights.matrix("token_embd.weight")).bind(s.ids, s.x)
        rope = RoPE(device, cfg.inv_freq(), cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.rope_pairs)
        attention = PagedAttention(device, cache, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, max_tokens,
                                   sliding_window=cfg.sliding_window, policy=policy)
        self.layers = [self.layer_class(device, cfg, weights, i, s, rope, attention, raw, policy)
                       for i in range(cfg.n_layers)]
        bias = weights.vector("output_norm.bias") if weights.has("output_norm.bias") else None
        self.final_norm = LayerNorm(device, weights.vector("output_norm.weight"), cfg.dim, cfg.norm_eps, bias).bind(
            s.x, s.last, s.step, last_only=True)
        head = weights.matrix("token_embd.weight" if cfg.tie_embeddings else "output.weight")
        self.lm_head = Linear(device, head, weights.bias("output.bias"), policy=policy).bind(s.last, s.logits, None)
