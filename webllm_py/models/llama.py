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
the run state (activation buffers, bound once for the largest step). A layer is its ops in run order
(`llama_layer`), fused once by models/layer.py; `record` lays one step's dispatches into a single
command encoder, top to bottom as above.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from typing import Callable

from ..attention import PagedAttention
from ..gpu import Buffer, Device
from ..kv_cache import KVCaches
from ..linear import Embedding, Linear
from ..ops import GLU, RMSNorm, RoPE
from ..planner import DEFAULT_POLICY, KernelPolicy, prestage_auto
from .config import ModelConfig
from .layer import Decoder, Layer, LayerWeights, Named
from .store import WeightStore


@dataclass
class RunState:
    """Activations for a step of up to `max_tokens` tokens, f32, row-major [tokens, features]."""

    step: Buffer  # u32 {pos0, n_tokens}, written by the host each step
    ids: Buffer  # u32 [max_tokens]
    x: Buffer  # residual stream [T, dim]
    h: Buffer  # normed input of a sub-block [T, dim]
    q: Buffer  # [T, n_heads * head_dim]
    k: Buffer  # [T, n_kv_heads * head_dim]
    v: Buffer
    o: Buffer  # attention output [T, n_heads * head_dim]
    gate: Buffer  # [T, hidden]
    up: Buffer
    act: Buffer
    last: Buffer  # final-normed last token [dim]
    logits: Buffer  # [vocab]
    # q and k before their per-head norms (models with qk norms; a kernel may not read and write one
    # buffer through two bindings); q and k themselves otherwise
    q_proj: Buffer
    k_proj: Buffer

    @classmethod
    def allocate(cls, device: Device, cfg: ModelConfig, max_tokens: int) -> "RunState":
        f32 = 4
        T = max_tokens
        q_dim, kv_dim = cfg.n_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim
        q, k = device.create_buffer(T * q_dim * f32, "q"), device.create_buffer(T * kv_dim * f32, "k")
        q_proj, k_proj = (
            (device.create_buffer(T * q_dim * f32, "q_proj"), device.create_buffer(T * kv_dim * f32, "k_proj"))
            if cfg.qk_norm
            else (q, k)
        )
        return cls(
            step=device.create_buffer(8, "step"),
            ids=device.create_buffer(4 * T, "ids"),
            x=device.create_buffer(T * cfg.dim * f32, "x"),
            h=device.create_buffer(T * cfg.dim * f32, "h"),
            q=q,
            k=k,
            v=device.create_buffer(T * kv_dim * f32, "v"),
            o=device.create_buffer(T * q_dim * f32, "o"),
            gate=device.create_buffer(T * cfg.hidden_dim * f32, "gate"),
            up=device.create_buffer(T * cfg.hidden_dim * f32, "up"),
            act=device.create_buffer(T * cfg.hidden_dim * f32, "act"),
            last=device.create_buffer(cfg.dim * f32, "last"),
            logits=device.create_buffer(cfg.vocab_size * f32, "logits"),
            q_proj=q_proj,
            k_proj=k_proj,
        )


# An MLP: layer i's ops reading h (the normed residual) and adding their output to x.
MLP = Callable[[LayerWeights, ModelConfig, RunState], Named]


def swiglu(b: LayerWeights, cfg: ModelConfig, s: RunState) -> Named:
    """x += (silu(h Wgate) * (h Wup)) Wdown"""
    return [
        ("w_gate", b.linear("ffn_gate", s.h, s.gate)),
        ("w_up", b.linear("ffn_up", s.h, s.up)),
        ("glu", GLU(b.device, cfg.hidden_dim, cfg.activation).bind(s.gate, s.up, s.act, s.step)),
        ("w_down", b.linear("ffn_down", s.act, s.x, accumulate=True)),
    ]


def rope_and_attention(
    device: Device, cfg: ModelConfig, cache: KVCaches, max_tokens: int, policy: KernelPolicy = DEFAULT_POLICY
) -> tuple[RoPE, PagedAttention]:
    """The rotary embedding and the paged attention every layer of a one-rope family shares (Llama,
    Qwen2, Mistral, Mixtral, Phi-2, StableLM): the config's rope, over the cache of its sliding window."""
    rope = RoPE(device, cfg.inv_freq(), cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.rope_pairs)
    attention = PagedAttention(
        device,
        cache[cfg.sliding_window],
        cfg.n_heads,
        cfg.n_kv_heads,
        cfg.head_dim,
        max_tokens,
        sliding_window=cfg.sliding_window,
        policy=policy,
    )
    return rope, attention


def llama_layer(
    b: LayerWeights, cfg: ModelConfig, s: RunState, rope: RoPE, attention: PagedAttention, mlp: MLP = swiglu
) -> Named:
    """Layer b.i in run order (the fusion pass, models/layer.py, then fuses Q/K/V, gate/up and the norms)."""
    return [
        ("attn_norm", b.rmsnorm("attn_norm", s.x, s.h)),  # h = rmsnorm(x)
        ("wq", b.linear("attn_q", s.h, s.q)),  # q, k, v = h Wq, h Wk, h Wv
        ("wk", b.linear("attn_k", s.h, s.k)),
        ("wv", b.linear("attn_v", s.h, s.v)),
        ("rope", rope.bind(s.q, s.k, s.step)),  # q, k = rope(q, k)
        ("attention", attention.bind(b.i, s.q, s.k, s.v, s.o, s.step)),
        ("wo", b.linear("attn_output", s.o, s.x, accumulate=True)),  # x += o Wo
        ("ffn_norm", b.rmsnorm("ffn_norm", s.x, s.h)),  # h = rmsnorm(x)
        *mlp(b, cfg, s),  # x += mlp(h)
    ]


class LlamaModel(Decoder):
    def __init__(
        self,
        device: Device,
        cfg: ModelConfig,
        weights: WeightStore,
        cache: KVCaches,
        max_tokens: int = 64,
        policy: KernelPolicy = DEFAULT_POLICY,
        mlp: MLP = swiglu,
    ):
        """mlp: each layer's MLP (Mixtral: a mixture of experts)."""
        self.device, self.cfg, self.cache, self.max_tokens = device, cfg, cache, max_tokens
        if policy.prestage is None:
            policy = replace(policy, prestage=prestage_auto(cfg.dim, dense_mlp=mlp is swiglu))
        self.policy = policy
        s = self.state = RunState.allocate(device, cfg, max_tokens)
        self.embed = Embedding(device, weights.matrix("token_embd.weight")).bind(s.ids, s.x)
        rope, attention = rope_and_attention(device, cfg, cache, max_tokens, policy)
        self.layers = [
            Layer(llama_layer(LayerWeights(device, cfg, weights, i, s.step, policy), cfg, s, rope, attention, mlp))
            for i in range(cfg.n_layers)
        ]
        self.final_norm = RMSNorm(device, weights.vector("output_norm.weight"), cfg.dim, cfg.norm_eps).bind(
            s.x, s.last, s.step, last_only=True
        )
        head = weights.matrix("token_embd.weight" if cfg.tie_embeddings else "output.weight")
        self.lm_head = Linear(device, head, policy=policy).bind(s.last, s.logits, None)
        self.link_emits()
