"""Paged attention: write the step's K/V into the paged cache, then attend.

`PagedAttention` holds the kernels of one model (shapes are baked into the WGSL at load time);
`bind(layer, ...)` makes that layer's bind groups once; `Bound.record(rec, n_tokens)` records
kv_write followed by `attention_decode` (+ `attention_combine` of its split-K slices) for one token,
or `attention_prefill` for a chunk of tokens.
Buffers follow the model's conventions: q [T, n_heads*head_dim], k/v [T, n_kv_heads*head_dim]
(already RoPE'd), out [T, n_heads*head_dim], all f32; `step` = u32 {pos0, n_tokens};
`block_table` = the active sequence's physical blocks (PagedKVCache.table_bytes).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from .gpu.base import BindGroup, Buffer, Device, Recorder
from .kv_cache import PagedKVCache

KV_WRITE_WG = 64


def _prefill_tiles(head_dim: int, group: int, limits: dict) -> tuple[int, int]:
    """(tq, tk): tokens per workgroup and key positions per tile, within the adapter's limits
    (workgroup size, and 2*tk*head_dim floats of workgroup memory)."""
    max_threads = int(limits.get("max_compute_invocations_per_workgroup", 256))
    shared = int(limits.get("max_compute_workgroup_storage_size", 16384))
    tq = 16
    while tq > 1 and tq * group > max_threads:
        tq //= 2
    tk = 32
    while tk > 1 and 2 * tk * head_dim * 4 > shared:
        tk //= 2
    return tq, tk


class PagedAttention:
    def __init__(self, device: Device, cache: PagedKVCache, n_heads: int, n_kv_heads: int, head_dim: int,
                 max_tokens: int, sliding_window: int | None = None, scale: float | None = None,
                 softcap: float | None = None, decode_wg: int | None = None, decode_splits: int | None = None,
                 decode_full_chunks: bool | None = None, combine_wg: int | None = None) -> None:
        if n_heads % n_kv_heads:
            raise ValueError(f"n_heads ({n_heads}) must be a multiple of n_kv_heads ({n_kv_heads})")
        if (cache.n_kv_heads, cache.head_dim) != (n_kv_heads, head_dim):
            raise ValueError("the KV cache was made for a different n_kv_heads/head_dim")
        self.device, self.cache = device, cache
        self.n_heads, self.n_kv_heads, self.head_dim = n_heads, n_kv_heads, head_dim
        self.max_tokens = max_tokens
        self.scale = 1.0 / math.sqrt(head_dim) if scale is None else float(scale)
        shape = dict(n_heads=n_heads, n_kv_heads=n_kv_heads, head_dim=head_dim, block_size=cache.block_size,
                     f16=cache.dtype == "f16")
        attn = dict(shape, scale=repr(self.scale), softcap=repr(float(softcap)) if softcap else None,
                    window=int(sliding_window) if sliding_window else None)
        self.tq, self.tk = _prefill_tiles(head_dim, n_heads // n_kv_heads, device.limits)
        # Split-K decode: enough workgroups (heads x splits) to keep a GPU's cores busy on long
        # contexts (short ones leave most slices empty, which costs little); a CPU adapter has few
        # cores and already gets one workgroup per head.
        # On GPUs, chunks of 32 positions and up to 1024 / n_heads slices: a 512-token context then
        # runs as 16 slices of one chunk per head (a workgroup's passes over a chunk are serial).
        if decode_wg is None:
            decode_wg = 64 if device.info.is_fallback else 32
        if decode_splits is None:
            decode_splits = max(1, 16 // n_heads) if device.info.is_fallback else max(1, min(64, 1024 // n_heads))
        self.splits = decode_splits
        self.kv_write = device.kernel("kv_write", label="kv_write", wg=KV_WRITE_WG, **{
            k: shape[k] for k in ("n_kv_heads", "head_dim", "block_size", "f16")})
        self.decode = device.kernel("attention_decode", label="attention_decode", wg=decode_wg,
                                    splits=self.splits,
                                    full_chunks=not device.info.is_fallback if decode_full_chunks is None else decode_full_chunks,
                                    **attn)
        self.combine = None
        if self.splits > 1:
            # GPUs: 32 dims per workgroup, so the merge spreads over n_heads * head_dim / 32 workgroups
            self.combine_wg = combine_wg or (min(64, head_dim) if device.info.is_fallback else 32)
            self.combine = device.kernel("attention_combine", label="attention_combine", n_heads=n_heads,
                                         head_dim=head_dim, splits=self.splits, wg=self.combine_wg)
            # Shared by all layers: each layer's decode and combine run before the next layer's.
            self.partials = device.create_buffer(4 * n_heads * self.splits * (head_dim + 2), "attention.partials")
        self.prefill = device.kernel("attention_prefill", label="attention_prefill", tq=self.tq, tk=self.tk, **attn)

    def bind(self, layer: int, q: Buffer, k: Buffer, v: Buffer, out: Buffer, step: Buffer,
             block_table: Buffer, rope: Any = None) -> "Bound":
        """rope: the ops.RoPE Bound the layer records before attention. Where it rotates whole
        heads of these q/k, single-token steps fold it into the cache write (one dispatch: RoPE
        marks itself `absorbed`); prefill records both as before."""
        d, kc, vc = self.device, self.cache.k[layer], self.cache.v[layer]
        split = self.splits > 1
        rope_kv = None
        rop = getattr(rope, "op", None)
        if (rop is not None and rop.params["rot_dim"] == self.head_dim and rop.params["head_dim"] == self.head_dim
                and rope.bind_group.buffers[0] is q and rope.bind_group.buffers[1] is k):
            kern = d.kernel("rope", label="rope+kv_write", kv_cache=True, block_size=self.cache.block_size,
                            f16=self.cache.dtype == "f16", **rop.params)
            rope_kv = (d.bind(kern, [q, k, rope.bind_group.buffers[2], step, v, kc, vc, block_table]),
                       -(-rop.pairs_per_token // rop.wg))
            rope.absorbed = True
        return Bound(
            self,
            d.bind(self.kv_write, [k, v, kc, vc, step, block_table]),
            d.bind(self.decode, [q, kc, vc, self.partials if split else out, step, block_table]),
            d.bind(self.combine, [self.partials, out]) if split else None,
            d.bind(self.prefill, [q, kc, vc, out, step, block_table]),
            rope_kv,
        )


@dataclass
class Bound:
    op: PagedAttention
    kv_write: BindGroup
    decode: BindGroup
    combine: BindGroup | None
    prefill: BindGroup
    rope_kv: tuple[BindGroup, int] | None = None  # RoPE + cache write in one dispatch (single tokens)

    def record(self, rec: Recorder, n_tokens: int) -> None:
        op = self.op
        if not 1 <= n_tokens <= op.max_tokens:
            raise ValueError(f"attention step of {n_tokens} tokens; this op handles 1..{op.max_tokens}")
        if n_tokens == 1 and self.rope_kv is not None:
            rec.dispatch(*self.rope_kv)
        else:
            rec.dispatch(self.kv_write, -(-n_tokens * op.n_kv_heads * op.head_dim // KV_WRITE_WG))
        if n_tokens == 1:
            rec.dispatch(self.decode, op.n_heads, op.splits)
            if self.combine is not None:
                rec.dispatch(self.combine, op.n_heads, -(-op.head_dim // op.combine_wg))
        else:
            rec.dispatch(self.prefill, -(-n_tokens // op.tq), op.n_kv_heads)
