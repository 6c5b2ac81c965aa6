"""StableLM (StableLmForCausalLM): Llama's SwiGLU MLP under LayerNorms with bias, partial rotary.

    x = embed(tokens)
    for each layer:
        h = layernorm(x) * w + b
        q, k, v = h Wq (+bq), h Wk (+bk), h Wv (+bv)            # use_qkv_bias
        q, k = layernorm_per_head(q), layernorm_per_head(k)     # qk_layernorm: one weight per head
        q, k = rope(q, k) on the first rot_dim of each head     # partial_rotary_factor (0.25 in StableLM 2)
        a = attention(q, k, v) Wo
        if use_parallel_residual:
            x = x + a + mlp(h)                                  # one norm feeds both branches
        else:
            x = x + a
            x = x + mlp(layernorm2(x))
        where mlp(h) = (silu(h Wgate) * (h Wup)) Wdown
    logits = layernorm(x[last]) Wout

The attention half is Phi-2's layer (models/phi2.py); only the MLP and its residual differ.
"""

from __future__ import annotations

from ..gpu import Device
from ..kv_cache import KVCaches
from ..planner import DEFAULT_POLICY, KernelPolicy
from .config import ModelConfig
from .layer import LayerWeights, Named
from .llama import RunState, swiglu
from .phi2 import Phi2Model
from .store import WeightStore


def stablelm_mlp(b: LayerWeights, cfg: ModelConfig, s: RunState) -> Named:
    """x += mlp(h), on the attention's h (parallel residual) or on layernorm2(x)."""
    if cfg.parallel_residual:
        return swiglu(b, cfg, s)
    return [("ffn_norm", b.layernorm("ffn_norm", s.x, s.h)), *swiglu(b, cfg, s)]


class StableLmModel(Phi2Model):
    def __init__(
        self,
        device: Device,
        cfg: ModelConfig,
        weights: WeightStore,
        cache: KVCaches,
        max_tokens: int = 64,
        policy: KernelPolicy = DEFAULT_POLICY,
    ):
        super().__init__(device, cfg, weights, cache, max_tokens, policy, mlp=stablelm_mlp)
