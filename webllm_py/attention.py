"""Paged attention: write the step's K/V into the paged cache, then attend.

`PagedAttention` holds the kernels of one model (shapes are baked into the WGSL at load time);
`bind(layer, ...)` makes that layer's bind groups once; `Bound.record(rec, n_tokens)` records, for
one token on GPUs, the single dispatch `attention_step` (RoPE + cache write + attention + merge of
its split-K slices); on CPU adapters kv_write followed by `attention_decode` (+ `attention_combine`);
and for a chunk of tokens kv_write then `attention_prefill`.
Buffers follow the model's conventions: q [T, n_heads*head_dim], k/v [T, n_kv_heads*head_dim]
(already RoPE'd), out [T, n_heads*head_dim], all f32; `step` = u32 {pos0, n_tokens};
`block_table` = the active sequence's physical blocks (PagedKVCache.table_bytes).
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

from .gpu.base import BindGroup, Buffer, Device, Recorder
from .kv_cache import PagedKVCache

KV_WRITE_WG = 64


@dataclass(frozen=True)
class StepTiling:
    """attention_step's shape: threads per workgroup, positions per pass, workgroups per kv head
    (split-K slices, merged in the same dispatch) and the fewest positions a slice takes."""
    wg: int = 128
    chunk: int = 32
    splits: int = 32
    min_split: int = 32


def default_step_tiling(n_kv_heads: int) -> StepTiling:
    # Slices of >= 32 positions, up to ~256 workgroups: 550 positions of the 8B layout run as
    # 8 kv heads x 18 one-pass slices, 4096 as 8 x 32 slices of 4 passes; a short chat as one slice
    # per kv head (no merge). H100, kernel_bench --only=attention (us per layer, floor ~8 us):
    # 8B 19.8 / 29.0 / 43.3 at 550 / 2048 / 4096 positions (256 threads and 64-position passes:
    # 20.9 / 31.8 / 50.2; the three-dispatch path 41.4 / 55.9 / 88.9).
    env = os.environ.get("WEBLLM_STEP")  # bench-only override: "WG,CHUNK,SPLITS,MIN_SPLIT"
    if env:
        return StepTiling(*(int(f) for f in env.split(",")))
    return StepTiling(splits=max(1, min(32, 256 // n_kv_heads)))


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
                 decode_full_chunks: bool | None = None, combine_wg: int | None = None,
                 fused: bool | None = None, step_tiling: StepTiling | None = None) -> None:
        if n_heads % n_kv_heads:
            raise ValueError(f"n_heads ({n_heads}) must be a multiple of n_kv_heads ({n_kv_heads})")
        if (cache.n_kv_heads, cache.head_dim) != (n_kv_heads, head_dim):
            raise ValueError("the KV cache was made for a different n_kv_heads/head_dim")
        self.device, self.cache = device, cache
        cache.attend_window(int(sliding_window) if sliding_window else None)
        self.n_heads, self.n_kv_heads, self.head_dim = n_heads, n_kv_heads, head_dim
        self.max_tokens = max_tokens
        self.scale = 1.0 / math.sqrt(head_dim) if scale is None else float(scale)
        shape = dict(n_heads=n_heads, n_kv_heads=n_kv_heads, head_dim=head_dim, block_size=cache.block_size,
                     f16=cache.dtype == "f16")
        attn = dict(shape, scale=repr(self.scale), softcap=repr(float(softcap)) if softcap else None,
                    window=int(sliding_window) if sliding_window else None)
        self.tq, self.tk = _prefill_tiles(head_dim, n_heads // n_kv_heads, device.limits)
        # One token in one dispatch (attention_step) on GPUs: a dependent dispatch costs ~6 us there
        # whatever it does. CPU adapters keep the kernels below (workgroup barriers cost ~10x there).
        # It binds up to 10 storage buffers and needs head_dim % 8 == 0 (vec4s, RoPE halves in vec4s).
        # Native wgpu over Vulkan only by default: its slices' merge relies on storageBarrier() being
        # a device-scope fence, which naga's SPIR-V emits (checked on the H100); WGSL itself promises
        # only workgroup scope, and naga's Metal/HLSL output and browsers' compilers have not been
        # checked (fused=True forces it).
        if fused is None:
            fused = (not device.info.is_fallback and device.info.api == "vulkan" and head_dim % 8 == 0
                     and int(device.limits.get("max_storage_buffers_per_shader_stage", 8)) >= 10)
        elif fused and head_dim % 8:
            raise ValueError(f"the fused decode step needs head_dim % 8 == 0, not {head_dim}")
        self.fused = bool(fused)
        self.step_tiling = step_tiling or default_step_tiling(n_kv_heads)
        self._step_params = dict(attn, **vars(self.step_tiling))
        if self.fused and self.step_tiling.splits > 1:
            # Shared by all layers (each layer's dispatch runs after the previous one's): the kv heads'
            # arrival counters (back to 0 after every dispatch), then the slices' partials.
            group = n_heads // n_kv_heads
            words = -(-n_kv_heads // 4) * 4 + n_kv_heads * self.step_tiling.splits * group * (head_dim + 2)
            self.scratch = device.create_buffer(4 * words, "attention.step_scratch")
        # Otherwise split-K decode: enough workgroups (heads x splits) to keep a GPU's cores busy on long
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
        self.decode = self.combine = None
        if not self.fused:
            self.decode = device.kernel("attention_decode", label="attention_decode", wg=decode_wg,
                                        splits=self.splits,
                                        full_chunks=not device.info.is_fallback if decode_full_chunks is None else decode_full_chunks,
                                        **attn)
        if self.splits > 1 and not self.fused:
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
        heads of these q/k, single-token steps fold it into attention_step (or, on CPU adapters,
        into the cache write): RoPE marks itself `absorbed`; prefill records both as before."""
        d, kc, vc = self.device, self.cache.k[layer], self.cache.v[layer]
        split = self.combine is not None
        rope_kv = step_bg = None
        rop = getattr(rope, "op", None)
        foldable = (rop is not None and rop.params["rot_dim"] == self.head_dim and rop.params["head_dim"] == self.head_dim
                    and rope.bind_group.buffers[0] is q and rope.bind_group.buffers[1] is k)
        if self.fused:
            # RoPE of q and the new k inside the step where it rotates whole heads; otherwise (partial
            # rotary) the layer's RoPE dispatch runs first and the step gets q and k rotated.
            kern = d.kernel("attention_step", label="attention_step",
                            rope=rop.params["pairs"] if foldable else None, **self._step_params)
            bufs = [q, k, v, kc, vc, out, step, block_table]
            bufs += [rope.bind_group.buffers[2]] if foldable else []
            bufs += [self.scratch] if self.step_tiling.splits > 1 else []
            step_bg = d.bind(kern, bufs)
            if foldable:
                rope.absorbed = True
        elif foldable:
            kern = d.kernel("rope", label="rope+kv_write", kv_cache=True, block_size=self.cache.block_size,
                            f16=self.cache.dtype == "f16", **rop.params)
            rope_kv = (d.bind(kern, [q, k, rope.bind_group.buffers[2], step, v, kc, vc, block_table]),
                       -(-rop.pairs_per_token // rop.wg))
            rope.absorbed = True
        return Bound(
            self,
            d.bind(self.kv_write, [k, v, kc, vc, step, block_table]),
            d.bind(self.decode, [q, kc, vc, self.partials if split else out, step, block_table]) if self.decode else None,
            d.bind(self.combine, [self.partials, out]) if split else None,
            d.bind(self.prefill, [q, kc, vc, out, step, block_table]),
            rope_kv,
            step_bg,
        )


@dataclass
class Bound:
    op: PagedAttention
    kv_write: BindGroup
    decode: BindGroup | None  # None where attention_step serves single tokens
    combine: BindGroup | None
    prefill: BindGroup
    rope_kv: tuple[BindGroup, int] | None = None  # RoPE + cache write in one dispatch (single tokens)
    step: BindGroup | None = None  # single tokens, GPUs: attention_step does everything in one dispatch

    def record(self, rec: Recorder, n_tokens: int) -> None:
        op = self.op
        if not 1 <= n_tokens <= op.max_tokens:
            raise ValueError(f"attention step of {n_tokens} tokens; this op handles 1..{op.max_tokens}")
        if n_tokens == 1 and self.step is not None:
            rec.dispatch(self.step, op.n_kv_heads, op.step_tiling.splits)
            return
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
