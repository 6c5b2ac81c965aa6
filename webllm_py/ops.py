"""Small elementwise and normalisation ops. Each op renders its kernel once, binds its buffers once
(`bind`), and records one dispatch per step (`record(rec, n_tokens)`), like Linear and PagedAttention.

Everything bound for a step is `Recordable`: a layer is the list of such ops in run order
(models/layer.py), and recording a step is calling `record` on each in turn."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Protocol

from .gpu import MAX_GROUPS, BindGroup, Buffer, Device, Recorder

ACTIVATIONS = ("silu", "gelu_tanh")


class Recordable(Protocol):
    """An op bound to its buffers once; `record` lays its dispatches for a step of n_tokens tokens
    into `rec` (BoundOp, linear.BoundLinear, attention.BoundAttention, linear.MatvecGroup, ...)."""

    def record(self, rec: Recorder, n_tokens: int) -> None: ...


@dataclass(eq=False)
class BoundOp:
    """One small op's bind group and its dispatch size: ceil(n_tokens * items_per_token /
    items_per_group) workgroups, or `fixed` workgroups whatever the step's size. `reads` / `writes`
    name its activation buffers, which the fusion pass (models/layer.py) follows from op to op."""

    bind_group: BindGroup
    items_per_token: int
    items_per_group: int = 1
    fixed: int = 0
    norm: "RMSNorm | None" = None  # a plain RMSNorm (one row per token, y = ...) a matvec may fold in
    absorbed: bool = False  # single tokens: a fused dispatch does this op's work (MatvecGroup)
    op: object = None  # the op that made it, for fusions that need its parameters (RoPE, the final RMSNorm)
    reads: tuple | None = None  # None: unknown (the fusion pass then assumes it reads everything)
    writes: tuple = ()
    strided: bool = False  # the kernel loops over its items (grid-stride): the grid may be capped

    def record(self, rec: Recorder, n_tokens: int) -> None:
        if self.absorbed and n_tokens == 1:
            return
        x = self.fixed or -(-n_tokens * self.items_per_token // self.items_per_group)
        if x > MAX_GROUPS:
            if not self.strided:
                raise ValueError(
                    f"{x} workgroups in one dimension (WebGPU allows {MAX_GROUPS}): a smaller prefill_chunk"
                )
            x = MAX_GROUPS
        rec.dispatch(self.bind_group, max(1, x))


class RMSNorm:
    def __init__(
        self, device: Device, weight: Buffer, dim: int, eps: float, weight_offset: float = 0.0, wg: int | None = None
    ):
        self.device, self.weight = device, weight
        if wg is None:  # a row is one workgroup: GPUs want a few loads per thread, CPU adapters few threads
            wg = 64 if device.info.is_fallback else min(256, 1 << max(5, (dim // 4 - 1).bit_length()))
        self.params = dict(dim=dim, eps=_f32_literal(eps), weight_offset=_f32_literal(weight_offset), wg=wg)

    def bind(
        self,
        x: Buffer,
        y: Buffer,
        step: Buffer,
        last_only: bool = False,
        rows_per_token: int = 1,
        accumulate: bool = False,
    ) -> BoundOp:
        """rows_per_token > 1 normalises each of a token's rows of `dim` separately (per-head norms);
        accumulate adds the result to y (Gemma 2/3's post-norms: x += rmsnorm(o Wo))."""
        k = self.device.kernel(
            "rmsnorm", last_only=last_only, rows_per_token=rows_per_token, accumulate=accumulate, **self.params
        )
        bg = self.device.bind(k, [x, self.weight, y, step])
        plain = not last_only and rows_per_token == 1 and not accumulate
        return BoundOp(
            bg,
            rows_per_token,
            fixed=1 if last_only else 0,
            norm=self if plain else None,
            op=self,
            reads=(x,),
            writes=(y,),
        )


class QuantizeX:
    """One token's x quantized once for the matvecs that read it (quantize_x.wgsl.j2), in place of every
    workgroup of the staged matvec quantizing it again (matvec_q4s.wgsl.j2 with StagedTiling.prestaged):
    the same per-32-block rule, so the same numbers. norm: the plain RMSNorm whose input x is, folded in as
    the staged kernel folds it (x * (nw + w_offset) quantized, each block's sum of x^2 written after the
    scales: the matvec adds them up for 1 / rms, as it does those matvec_q4s's emit_next writes)."""

    def __init__(self, device: Device, K: int, planes: int = 1, norm: RMSNorm | None = None, wg: int = 128):
        if K % 256:
            raise ValueError(f"QuantizeX: K = {K} is not a multiple of 256")
        self.device, self.K, self.planes, self.norm, self.wg = device, K, planes, norm, wg
        nparams = dict(w_offset=norm.params["weight_offset"]) if norm else {}
        self.kernel = device.kernel("quantize_x", K=K, wg=wg, planes=planes, norm=norm is not None, **nparams)

    @staticmethod
    def xd_bytes(K: int) -> int:
        """Bytes of xd: K / 32 (dx, dx sum q) and K / 32 sums of x^2 (f32 each)."""
        return 4 * 3 * (K // 32)

    def buffers(self) -> tuple[Buffer, Buffer]:
        """Fresh (xq, xd) for bind: planes * K int8, and xd_bytes(K)."""
        return self.device.create_buffer(self.planes * self.K), self.device.create_buffer(self.xd_bytes(self.K))

    def bind(self, x: Buffer, xq: Buffer, xd: Buffer) -> BoundOp:
        bufs = [x, self.norm.weight, xq, xd] if self.norm else [x, xq, xd]
        return BoundOp(self.device.bind(self.kernel, bufs), self.K // 32, self.wg, reads=(x,), writes=(xq, xd))


class LayerNorm:
    """y = (x - mean) / sqrt(var + eps) * w (+ b), per row (Phi-2, StableLM). With rows_per_token > 1
    each of a token's rows of `dim` is normalised alone (per-head q/k norms); per_row_weight: w and b
    hold one row per head (StableLM) instead of one shared row (Phi-2)."""

    def __init__(self, device: Device, weight: Buffer, dim: int, eps: float, bias: Buffer | None = None, wg: int = 64):
        self.device, self.weight, self.bias = device, weight, bias
        self.params = dict(dim=dim, eps=_f32_literal(eps), wg=wg, has_bias=bias is not None)

    def bind(
        self,
        x: Buffer,
        y: Buffer,
        step: Buffer,
        last_only: bool = False,
        rows_per_token: int = 1,
        per_row_weight: bool = False,
    ) -> BoundOp:
        k = self.device.kernel(
            "layernorm",
            last_only=last_only,
            rows_per_token=rows_per_token,
            per_row_weight=per_row_weight,
            **self.params,
        )
        extra = [self.bias] if self.bias is not None else []
        bg = self.device.bind(k, [x, self.weight, y, step, *extra])
        return BoundOp(bg, rows_per_token, fixed=1 if last_only else 0, reads=(x,), writes=(y,))


class RoPE:
    def __init__(
        self,
        device: Device,
        inv_freq: list[float],
        n_heads: int,
        n_kv_heads: int,
        head_dim: int,
        pairs: str,
        wg: int = 64,
    ):
        if pairs not in ("adjacent", "halves"):
            raise ValueError(f"rope pairs must be 'adjacent' or 'halves', not {pairs!r}")
        self.device = device
        self.inv_freq = device.buffer_from(struct.pack(f"<{len(inv_freq)}f", *inv_freq), "rope.inv_freq")
        rot_dim = 2 * len(inv_freq)
        self.params = dict(
            n_heads=n_heads, n_kv_heads=n_kv_heads, head_dim=head_dim, rot_dim=rot_dim, pairs=pairs, wg=wg
        )
        self.kernel = device.kernel("rope", kv_cache=False, **self.params)
        self.pairs_per_token, self.wg = (n_heads + n_kv_heads) * (rot_dim // 2), wg

    def bind(self, q: Buffer, k: Buffer, step: Buffer) -> BoundOp:
        """(PagedAttention.bind(rope=...) may fold it into its cache write for single tokens.)"""
        return BoundOp(
            self.device.bind(self.kernel, [q, k, self.inv_freq, step]),
            self.pairs_per_token,
            self.wg,
            op=self,
            reads=(q, k),
            writes=(q, k),
        )


class GLU:
    """out = act(gate) * up: the gated MLP's middle (SwiGLU for Llama, GeGLU for Gemma)."""

    def __init__(self, device: Device, n: int, act: str = "silu", wg: int = 64):
        if act not in ACTIVATIONS:
            raise ValueError(f"activation {act!r} not supported (supported: {ACTIVATIONS})")
        self.device, self.n, self.wg, self.act = device, n, wg, act
        self.kernel = device.kernel("glu", n=n, act=act, wg=wg)

    def bind(self, gate: Buffer, up: Buffer, out: Buffer, step: Buffer) -> BoundOp:
        return BoundOp(
            self.device.bind(self.kernel, [gate, up, out, step]),
            self.n,
            self.wg,
            op=self,
            reads=(gate, up),
            writes=(out,),
            strided=True,
        )


class Activation:
    """out = act(x): the middle of an ungated MLP (Phi-2's fc1 -> gelu_new -> fc2)."""

    def __init__(self, device: Device, n: int, act: str = "gelu_tanh", wg: int = 64):
        if act not in ACTIVATIONS:
            raise ValueError(f"activation {act!r} not supported (supported: {ACTIVATIONS})")
        self.device, self.n, self.wg = device, n, wg
        self.kernel = device.kernel("activation", n=n, act=act, wg=wg)

    def bind(self, x: Buffer, out: Buffer, step: Buffer) -> BoundOp:
        return BoundOp(
            self.device.bind(self.kernel, [x, out, step]), self.n, self.wg, reads=(x,), writes=(out,), strided=True
        )


class Softcap:
    """y = cap * tanh(y / cap), in place over n values (Gemma 2's final logits)."""

    def __init__(self, device: Device, n: int, cap: float, wg: int = 64):
        self.device, self.n, self.wg = device, n, wg
        self.kernel = device.kernel("softcap", n=n, cap=_f32_literal(cap), wg=wg)

    def bind(self, y: Buffer) -> BoundOp:
        return BoundOp(self.device.bind(self.kernel, [y]), self.n, self.wg, reads=(y,), writes=(y,))


def _f32_literal(v: float) -> str:
    """A WGSL f32 literal that round-trips the value (repr keeps every digit; WGSL needs a '.' or 'e')."""
    s = repr(float(v))
    return s if ("." in s or "e" in s) else s + ".0"
