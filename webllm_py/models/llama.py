"""The Llama family: Llama 2/3, SmolLM2, TinyLlama, Mistral (full attention), Qwen2 (QKV biases).

    x = embed(tokens)
    for each layer:
        h = rmsnorm(x)
        q, k, v = h Wq (+bq), h Wk (+bk), h Wv (+bv)
        q, k = rope(q, k)
        x = x + attention(q, k, v) Wo              # paged KV cache, causal, grouped-query
        h = rmsnorm(x)
        x = x + (silu(h Wgate) * (h Wup)) Wdown
    logits = rmsnorm(x[last]) Wout                 # Wout = Wembed when tied

Like llama2.c: a config (models.config.ModelConfig), the weights (uploaded once, still quantized) and
the run state (activation buffers, bound once for the largest step). `record` lays one step's
dispatches into a single command encoder, top to bottom as above.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..attention import PagedAttention
from ..gpu import Buffer, Device, Recorder
from ..kv_cache import PagedKVCache
from ..linear import Embedding, Linear, MatvecGroup
from ..planner import DEFAULT_POLICY, KernelPolicy
from ..ops import GLU, RMSNorm, RoPE
from .config import ModelConfig
from .store import WeightStore


@dataclass
class RunState:
    """Activations for a step of up to `max_tokens` tokens, f32, row-major [tokens, features]."""
    step: Buffer     # u32 {pos0, n_tokens}, written by the host each step
    ids: Buffer      # u32 [max_tokens]
    table: Buffer    # u32 block table of the active sequence
    x: Buffer        # residual stream [T, dim]
    h: Buffer        # normed input of a sub-block [T, dim]
    q: Buffer        # [T, n_heads * head_dim]
    k: Buffer        # [T, n_kv_heads * head_dim]
    v: Buffer
    o: Buffer        # attention output [T, n_heads * head_dim]
    gate: Buffer     # [T, hidden]
    up: Buffer
    act: Buffer
    last: Buffer     # final-normed last token [dim]
    logits: Buffer   # [vocab]

    @classmethod
    def allocate(cls, device: Device, cfg: ModelConfig, max_tokens: int, max_blocks: int) -> "RunState":
        f32 = 4
        T = max_tokens
        q_dim, kv_dim = cfg.n_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim
        return cls(
            step=device.create_buffer(8, "step"), ids=device.create_buffer(4 * T, "ids"),
            table=device.create_buffer(4 * max_blocks, "block_table"),
            x=device.create_buffer(T * cfg.dim * f32, "x"), h=device.create_buffer(T * cfg.dim * f32, "h"),
            q=device.create_buffer(T * q_dim * f32, "q"), k=device.create_buffer(T * kv_dim * f32, "k"),
            v=device.create_buffer(T * kv_dim * f32, "v"), o=device.create_buffer(T * q_dim * f32, "o"),
            gate=device.create_buffer(T * cfg.hidden_dim * f32, "gate"),
            up=device.create_buffer(T * cfg.hidden_dim * f32, "up"),
            act=device.create_buffer(T * cfg.hidden_dim * f32, "act"),
            last=device.create_buffer(cfg.dim * f32, "last"), logits=device.create_buffer(cfg.vocab_size * f32, "logits"),
        )


class LlamaLayer:
    def __init__(self, device: Device, cfg: ModelConfig, w: WeightStore, i: int, s: RunState,
                 rope: RoPE, attention: PagedAttention, policy: KernelPolicy = DEFAULT_POLICY):
        blk = f"blk.{i}."
        self.policy = policy

        def linear(name: str, x: Buffer, y: Buffer, accumulate: bool = False):
            bias = w.bias(blk + name + ".bias")
            return Linear(device, w.matrix(blk + name + ".weight"), bias, policy=policy).bind(
                x, y, s.step, accumulate=accumulate)

        norm = lambda name: RMSNorm(device, w.vector(blk + name + ".weight"), cfg.dim, cfg.norm_eps)
        self.attn_norm = norm("attn_norm").bind(s.x, s.h, s.step)
        self.wq = linear("attn_q", s.h, s.q)
        self.wk = linear("attn_k", s.h, s.k)
        self.wv = linear("attn_v", s.h, s.v)
        self.rope = rope.bind(s.q, s.k, s.step)
        self.attention = attention.bind(i, s.q, s.k, s.v, s.o, s.step, s.table, rope=self.rope)  # decode: RoPE + cache write in one dispatch
        self.wo = linear("attn_output", s.o, s.x, accumulate=True)      # x += o Wo
        self.ffn_norm = norm("ffn_norm").bind(s.x, s.h, s.step)
        self.ffn = self.feed_forward(device, cfg, w, i, s)
        # One dispatch per decode step where the kernel can fuse them; the norm folds in with the
        # staged 4-bit matvec (GPUs, K % 256 == 0) or where KernelPolicy.fold_norm_max_k allows.
        self.qkv = MatvecGroup([self.wq, self.wk, self.wv], norm=self.attn_norm)

    def feed_forward(self, device: Device, cfg: ModelConfig, w: WeightStore, i: int, s: RunState) -> list:
        """x += (silu(h Wgate) * (h Wup)) Wdown, as ops in order. The hook a family with another MLP
        overrides (Mixtral: a mixture of such MLPs)."""
        def linear(name: str, x: Buffer, y: Buffer, accumulate: bool = False):
            blk = f"blk.{i}.{name}"
            return Linear(device, w.matrix(blk + ".weight"), w.bias(blk + ".bias"), policy=self.policy).bind(
                x, y, s.step, accumulate=accumulate)

        self.w_gate = linear("ffn_gate", s.h, s.gate)
        self.w_up = linear("ffn_up", s.h, s.up)
        self.glu = GLU(device, cfg.hidden_dim, cfg.activation).bind(s.gate, s.up, s.act, s.step)
        self.w_down = linear("ffn_down", s.act, s.x, accumulate=True)   # x += act Wdown
        # gate, up and the GLU in one dispatch per decode step where the matvec kernel can fuse them
        self.gate_up = MatvecGroup([self.w_gate, self.w_up], glu=(cfg.activation, self.glu), norm=self.ffn_norm)
        return [self.gate_up, self.w_down]

    def record(self, rec: Recorder, n: int) -> None:
        for op in (self.attn_norm, self.qkv, self.rope, self.attention, self.wo,
                   self.ffn_norm, *self.ffn):
            op.record(rec, n)


class LlamaModel:
    def __init__(self, device: Device, cfg: ModelConfig, weights: WeightStore, cache: PagedKVCache,
                 max_tokens: int = 64, policy: KernelPolicy = DEFAULT_POLICY):
        self.device, self.cfg, self.cache, self.max_tokens = device, cfg, cache, max_tokens
        self.policy = policy
        s = self.state = RunState.allocate(device, cfg, max_tokens, cache.max_blocks_per_seq)
        self.embed = Embedding(device, weights.matrix("token_embd.weight")).bind(s.ids, s.x)
        rope = RoPE(device, cfg.inv_freq(), cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.rope_pairs)
        attention = PagedAttention(device, cache, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, max_tokens,
                                   sliding_window=cfg.sliding_window, policy=policy)
        self.layers = [self.make_layer(device, cfg, weights, i, s, rope, attention) for i in range(cfg.n_layers)]
        self.final_norm = RMSNorm(device, weights.vector("output_norm.weight"), cfg.dim, cfg.norm_eps).bind(
            s.x, s.last, s.step, last_only=True)
        head = weights.matrix("token_embd.weight" if cfg.tie_embeddings else "output.weight")
        self.lm_head = Linear(device, head, policy=policy).bind(s.last, s.logits, None)

    def make_layer(self, device: Device, cfg: ModelConfig, weights: WeightStore, i: int, s: RunState,
                   rope: RoPE, attention: PagedAttention):
        """Layer i (a family with its own layer class overrides this)."""
        return LlamaLayer(device, cfg, weights, i, s, rope, attention, self.policy)

    def record(self, rec: Recorder, n: int, logits: bool) -> None:
        """One step of n tokens: the residual stream through every layer, then (if asked) the last
        token's logits."""
        self.embed.record(rec, n)
        for layer in self.layers:
            layer.record(rec, n)
        if logits:
            self.record_head(rec, n)

    def record_head(self, rec: Recorder, n: int) -> None:
        """Logits of the step's last token (final norm reads row n-1 of the residual stream)."""
        self.final_norm.record(rec, n)
        self.lm_head.record(rec, 1)
