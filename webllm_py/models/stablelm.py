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

from ..linear import MatvecGroup
from ..ops import GLU
from .phi2 import Phi2Layer, Phi2Model


class StableLmLayer(Phi2Layer):
    def feed_forward(self) -> list:
        s, cfg = self.s, self.cfg
        ops = []
        if not cfg.parallel_residual:  # the MLP reads the residual stream after attention, normed again
            self.ffn_norm = self.norm("ffn_norm").bind(s.x, s.h, s.step)
            ops.append(self.ffn_norm)
        self.w_gate = self.linear("ffn_gate", s.h, s.gate)
        self.w_up = self.linear("ffn_up", s.h, s.up)
        self.glu = GLU(self.device, cfg.hidden_dim, cfg.activation).bind(s.gate, s.up, s.act, s.step)
        self.w_down = self.linear("ffn_down", s.act, s.x, accumulate=True)   # x += act Wdown
        # gate, up and the GLU in one decode dispatch where the matvec kernel can fuse them
        self.gate_up = MatvecGroup([self.w_gate, self.w_up], glu=(cfg.activation, self.glu))
        return ops + [self.gate_up, self.w_down]


class StableLmModel(Phi2Model):
    layer_class = StableLmLayer
