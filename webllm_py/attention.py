"""Paged attention: write the step's K/V into the paged cache, then attend.

`PagedAttention` holds the kernels of one model (shapes are baked into the WGSL at load time);
`bind(layer, ...)` makes that layer's bind groups once; `BoundAttention.record(rec, n_tokens)` records, for
one token on GPUs, the single dispatch `attention_step` (RoPE + cache write + attention + merge of
its split-K slices; where storageBarrier() is not a device-scope fence, the merge is the
`attention_combine` dispatch after it); on CPU adapters kv_write followed by `attention_decode` (+ `attention_combine`);
and for a chunk of tokens kv_write then `attention_prefill`.
Buffers follow the model's conventions: q [T, n_heads*head_dim], k/v [T, n_kv_heads*head_dim]
(already RoPE'd), out [T, n_heads*head_dim], all f32; `step` = u32 {pos0, n_tokens};
`block_table` = the active sequence's physical blocks (PagedKVCache.table_bytes): the cache's own
`table` buffer unless bind is given another.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from .errors import KernelPolicyError
from .gpu.base import BindGroup, Buffer, Device, Recorder
from .kv_cache import PagedKVCache
from .planner import (  # noqa: F401  (StepTiling, default_step_tiling: tests and scripts/kernel_bench.py)
    DEFAULT_POLICY,
    Adapter,
    KernelPolicy,
    StepTiling,
    default_step_tiling,
    plan_attention,
)

KV_WRITE_WG = 64
# attention_combine's threads a workgroup where it merges the prompt's key slices (a row's head_dim in
# ceil(head_dim / 64) workgroups: 128-dim heads in two)
PREFILL_COMBINE_WG = 64


class PagedAttention:
    def __init__(
        self,
        device: Device,
        cache: PagedKVCache,
        n_heads: int,
        n_kv_heads: int,
        head_dim: int,
        max_tokens: int,
        sliding_window: int | None = None,
        scale: float | None = None,
        softcap: float | None = None,
        decode_wg: int | None = None,
        decode_splits: int | None = None,
        decode_full_chunks: bool | None = None,
        combine_wg: int | None = None,
        fused: bool | None = None,
        step_tiling: StepTiling | None = None,
        policy: KernelPolicy = DEFAULT_POLICY,
    ) -> None:
        """The kernels and their tilings are planner.plan_attention's; the arguments from decode_wg on
        override its choice (tests)."""
        if n_heads % n_kv_heads:
            raise ValueError(f"n_heads ({n_heads}) must be a multiple of n_kv_heads ({n_kv_heads})")
        if (cache.n_kv_heads, cache.head_dim) != (n_kv_heads, head_dim):
            raise ValueError("the KV cache was made for a different n_kv_heads/head_dim")
        self.device, self.cache = device, cache
        cache.attend_window(int(sliding_window) if sliding_window else None)
        self.n_heads, self.n_kv_heads, self.head_dim = n_heads, n_kv_heads, head_dim
        self.max_tokens = max_tokens
        self.scale = 1.0 / math.sqrt(head_dim) if scale is None else float(scale)
        shape = dict(
            n_heads=n_heads,
            n_kv_heads=n_kv_heads,
            head_dim=head_dim,
            block_size=cache.block_size,
            f16=cache.dtype == "f16",
            packed=cache.dtype == "f16x2",
        )
        attn = dict(
            shape,
            scale=repr(self.scale),
            softcap=repr(float(softcap)) if softcap else None,
            window=int(sliding_window) if sliding_window else None,
        )
        # One token in one dispatch (attention_step) on GPUs: a dependent dispatch costs ~6 us there
        # whatever it does. CPU adapters keep the kernels below (workgroup barriers cost ~10x there).
        plan = self.plan = plan_attention(
            Adapter.of(device),
            n_heads,
            n_kv_heads,
            head_dim,
            policy,
            fused=fused,
            step_tiling=step_tiling,
            decode_wg=decode_wg,
            decode_splits=decode_splits,
            decode_full_chunks=decode_full_chunks,
            combine_wg=combine_wg,
            kv_dtype=cache.dtype,
        )
        self.tq, self.tk = plan.prefill.tq, plan.prefill.tk
        self.fused = plan.fused
        self.step_tiling = plan.step
        # The step's slices merged by attention_combine (a second dispatch) rather than in the step
        self.step_combine = self.fused and not plan.step_merge and self.step_tiling.splits > 1
        self._step_params = dict(attn, combine=self.step_combine, **vars(self.step_tiling))
        if self.fused and self.step_tiling.splits > 1 and not self.step_combine:
            # Shared by all layers (each layer's dispatch runs after the previous one's): the kv heads'
            # arrival counters (back to 0 after every dispatch), then the slices' partials.
            group = n_heads // n_kv_heads
            words = -(-n_kv_heads // 4) * 4 + n_kv_heads * self.step_tiling.splits * group * (head_dim + 2)
            self.scratch = device.create_buffer(4 * words, "attention.step_scratch")
        # Otherwise split-K decode (attention_decode, merged by attention_combine).
        self.splits = self.step_tiling.splits if self.step_combine else plan.splits
        self.kv_write = device.kernel(
            "kv_write",
            label="kv_write",
            wg=KV_WRITE_WG,
            **{k: shape[k] for k in ("n_kv_heads", "head_dim", "block_size", "f16", "packed")},
        )
        self.decode = self.combine = None
        if not self.fused:
            self.decode = device.kernel(
                "attention_decode",
                label="attention_decode",
                wg=plan.decode_wg,
                splits=self.splits,
                full_chunks=plan.full_chunks,
                **attn,
            )
        if self.splits > 1 and (not self.fused or self.step_combine):
            self.combine_wg = plan.combine_wg
            self.combine = self._combine_kernel(self.splits, self.combine_wg)
            # Shared by all layers: each layer's decode (or step) and combine run before the next layer's.
            self.partials = device.create_buffer(4 * n_heads * self.splits * (head_dim + 2), "attention.partials")
        lanes = plan.prefill.lanes
        # the prompt's key walk in slices (PrefillTiling.splits), their partials merged by attention_combine
        self.prefill_splits = plan.prefill.splits if plan.prefill.sgmat else 1
        self.prefill_combine = None
        size = 4 * max_tokens * n_heads * self.prefill_splits * (head_dim + 2)  # the slices' partials
        if self.prefill_splits > 1:
            if max_tokens * n_heads > 65535:  # attention_combine's rows are the dispatch's x
                raise KernelPolicyError(
                    f"prefill attention in {self.prefill_splits} slices merges {max_tokens} tokens x "
                    f"{n_heads} heads = {max_tokens * n_heads} rows, past a dispatch's 65535 workgroups"
                )
            if size > device.max_binding_size:
                raise KernelPolicyError(
                    f"prefill attention in {self.prefill_splits} slices needs {size} bytes of partials "
                    f"({max_tokens} tokens x {n_heads} heads), past this device's {device.max_binding_size} a "
                    f"binding: fewer slices or a shorter prefill chunk"
                )
        if plan.prefill.sgmat:
            # the same bindings and dispatch; the label keeps it in profiles' attention_prefill row
            self.prefill = device.kernel(
                "attention_prefill_sgmat",
                label="attention_prefill",
                tq=self.tq,
                tk=self.tk,
                sgc=plan.prefill.sgc,
                twopass=plan.prefill.twopass,
                lazy=plan.prefill.lazy,
                **({"splits": self.prefill_splits} if self.prefill_splits > 1 else {}),
                **attn,
            )
            if self.prefill_splits > 1:
                self.prefill_combine = self._combine_kernel(self.prefill_splits, PREFILL_COMBINE_WG)
                # Shared by all layers, as the decode's partials: a layer's slices and merge run before the next's
                self.prefill_partials = device.create_buffer(size, "attention.prefill_partials")
        else:
            self.prefill = device.kernel(
                "attention_prefill",
                label="attention_prefill",
                tq=self.tq,
                tk=self.tk,
                lanes=lanes,
                rows=plan.prefill.rows,
                cpu_unroll=plan.prefill.unroll,
                subgroups=lanes > 1,  # the lanes of a query row sum its scores with subgroupShuffleXor
                **attn,
            )

    def bind(
        self,
        layer: int,
        q: Buffer,
        k: Buffer,
        v: Buffer,
        out: Buffer,
        step: Buffer,
        block_table: Buffer | None = None,
        rope: Any = None,
        qk_norm: tuple[Any, Any] | None = None,
    ) -> "BoundAttention":
        """layer: the model's layer, whose K/V the cache holds. block_table: the cache's `table` unless
        given. rope: the ops.RoPE BoundOp the layer records just before attention (the fusion pass,
        models/layer.py, passes it). Where it rotates whole heads of these q/k, single-token steps fold
        it into attention_step (or, on CPU adapters, into the cache write): RoPE marks itself
        `absorbed`; prefill records both as before. qk_norm: the per-head ops.RMSNorm BoundOps (q's, k's)
        the layer records before that RoPE (Gemma 3); where RoPE folds into attention_step, they fold too
        (the step reads their inputs) and mark themselves `absorbed`."""
        d, kc, vc = self.device, self.cache.k[layer], self.cache.v[layer]
        block_table = self.cache.table if block_table is None else block_table
        split = self.combine is not None
        rope_kv = step_bg = step_kb = None
        rop = getattr(rope, "op", None)
        foldable = (
            rop is not None
            and rop.params["rot_dim"] == self.head_dim
            and rop.params["head_dim"] == self.head_dim
            and rope.reads[0] is q
            and rope.reads[1] is k
        )
        if self.fused:
            # RoPE of q and the new k inside the step where it rotates whole heads; otherwise (partial
            # rotary) the layer's RoPE dispatch runs first and the step gets q and k rotated. The per-head
            # norms before that RoPE fold in with it (the step reads q and k before them).
            params = dict(self._step_params, rope=rop.params["pairs"] if foldable else None)
            norms = self._qk_norm_fold(qk_norm, q, k) if foldable else None
            if norms:
                qn, kn = (n.op for n in norms)
                params.update(qk_norm=True, qk_eps=qn.params["eps"], qk_w_offset=qn.params["weight_offset"])
            # the step's q and k: the norms' inputs where it applies them (prefill reads the norms' outputs)
            sq, sk = (norms[0].reads[0], norms[1].reads[0]) if norms else (q, k)
            kern = d.kernel("attention_step", label="attention_step", **params)
            bufs = [sq, sk, v, kc, vc, self.partials if split else out, step, block_table]
            bufs += [rop.inv_freq] if foldable else []
            bufs += [self.scratch] if self.step_tiling.splits > 1 and not split else []
            bufs += [qn.weight, kn.weight] if norms else []
            step_bg = d.bind(kern, bufs)
            step_kb = (params, bufs)
            if foldable:
                rope.absorbed = True
            for n in norms or ():
                n.absorbed = True
        elif foldable and (self.cache.dtype != "f16x2" or rop.params["pairs"] == "adjacent"):
            # (a packed cache with "halves" RoPE keeps the separate kv_write: a thread's rotation pair
            # (i, i + half) is not one of the cache's u32 words, so two threads would write halves of one)
            kern = d.kernel(
                "rope",
                label="rope+kv_write",
                kv_cache=True,
                block_size=self.cache.block_size,
                f16=self.cache.dtype == "f16",
                packed=self.cache.dtype == "f16x2",
                **rop.params,
            )
            rope_kv = (
                d.bind(kern, [q, k, rop.inv_freq, step, v, kc, vc, block_table]),
                -(-rop.pairs_per_token // rop.wg),
            )
            rope.absorbed = True
        return BoundAttention(
            self,
            d.bind(self.kv_write, [k, v, kc, vc, step, block_table]),
            d.bind(self.decode, [q, kc, vc, self.partials if split else out, step, block_table])
            if self.decode
            else None,
            d.bind(self.combine, [self.partials, out]) if split else None,
            d.bind(
                self.prefill, [q, kc, vc, self.prefill_partials if self.prefill_combine else out, step, block_table]
            ),
            rope_kv,
            step_bg,
            (layer, q, k, v, out, step, block_table),
            step_kb,
            prefill_combine=d.bind(self.prefill_combine, [self.prefill_partials, out])
            if self.prefill_combine
            else None,
        )

    def _combine_kernel(self, splits: int, wg: int, **emit: Any) -> Any:
        """attention_combine merging `splits` slices' partials (a decode step's heads, or a prompt's T x n_heads
        rows: the kernel does not tell them apart), wg threads a workgroup; emit: its emit / write_out options."""
        return self.device.kernel(
            "attention_combine",
            label="attention_combine",
            n_heads=self.n_heads,
            head_dim=self.head_dim,
            splits=splits,
            wg=wg,
            **emit,
        )

    def _step_bindings(self, norms: bool, emit: bool) -> int:
        """attention_step's storage bindings at most: q .. block_table (8), inv_freq (RoPE folded), the scratch
        where it merges its slices, the q/k norms' weights (norms), wo's quantized x (emit: xq, xd)."""
        merge = self.step_tiling.splits > 1 and not self.step_combine
        return 8 + 1 + (1 if merge else 0) + (2 if norms else 0) + (2 if emit else 0)

    def _qk_norm_fold(self, qk_norm: tuple[Any, Any] | None, q: Buffer, k: Buffer) -> tuple | None:
        """The ops recorded right before RoPE (`qk_norm`: the fusion pass's candidates) where attention_step can
        apply them itself, or None: per-head plain RMSNorms over whole heads writing this q and k (RoPE's
        inputs), of one eps and weight offset, reading other buffers, with the bindings to spare (and still
        room for emit_into's two)."""
        from .ops import BoundOp, RMSNorm

        if qk_norm is None or not all(isinstance(o, BoundOp) and isinstance(o.op, RMSNorm) for o in qk_norm):
            return None
        qn, kn = qk_norm
        ops = (qn.op, kn.op)
        if not all(o.params["dim"] == self.head_dim for o in ops):
            return None
        if (
            ops[0].params["eps"] != ops[1].params["eps"]
            or ops[0].params["weight_offset"] != ops[1].params["weight_offset"]
        ):
            return None
        if not (qn.writes[0] is q and kn.writes[0] is k and qn.reads[0] is not q and kn.reads[0] is not k):
            return None
        if qn.items_per_token != self.n_heads or kn.items_per_token != self.n_kv_heads or qn.fixed or kn.fixed:
            return None
        if Adapter.of(self.device).storage_buffers < self._step_bindings(norms=True, emit=True):
            return None
        return qk_norm

    def emit_refusal(self) -> str | None:
        """Why a single-token step cannot also write its output as wo's prestaged x (emit_into), or None
        where it can: the dispatch that writes the merged output (attention_combine, or attention_step where
        it merges its slices or has one) must hold whole 32-blocks of it."""
        if self.head_dim % 32:
            return f"head_dim {self.head_dim} is not whole 32-blocks"
        if (self.n_heads * self.head_dim) % 256:
            return "wo's K is not a multiple of 256"
        if self.combine is not None:
            return None if self.combine_wg % 32 == 0 else f"attention_combine's wg {self.combine_wg} % 32 != 0"
        if not self.fused:
            return "attention_decode writes the output itself (one slice)"
        # attention_step merging its slices (the q/k norms' bindings, where folded, were checked with these)
        need = self._step_bindings(norms=False, emit=True)
        if Adapter.of(self.device).storage_buffers < need:
            return f"attention_step with emit needs {need} storage bindings"
        return None


@dataclass(eq=False)
class BoundAttention:
    """One layer's attention, bound: the dispatches of a decode token or of a prefill chunk."""

    op: PagedAttention
    kv_write: BindGroup
    decode: BindGroup | None  # None where attention_step serves single tokens
    combine: BindGroup | None
    prefill: BindGroup
    rope_kv: tuple[BindGroup, int] | None = None  # RoPE + cache write in one dispatch (single tokens)
    step: BindGroup | None = None  # single tokens, GPUs: attention_step (+ combine where op.step_combine)
    args: tuple = ()  # bind's arguments (layer, q, k, v, out, step, block_table)
    step_kernel_bufs: Any = None  # attention_step's (template parameters, buffers): emit_into binds it again
    emits: tuple | None = None  # emit_into's (xq, xd): wo's x, quantized by the step or combine
    prefill_combine: BindGroup | None = None  # attention_combine of the prompt's key slices (prefill_splits)

    def emit_into(self, planes: int, write_out: bool = True) -> tuple[Buffer, Buffer] | None:
        """Make the single-token step also write its output quantized as wo's prestaged x (planes int8
        planes; the q8_block rule, in ops.QuantizeX's layout, no norm) into the device-wide (xq, xd) it
        returns; write_out False: attention_combine no longer writes the f32 output (nothing but wo reads it
        in a decode step; attention_step keeps writing it). None where it cannot (PagedAttention.emit_refusal);
        prefill is unchanged."""
        from .linear import _scratch
        from .ops import QuantizeX

        op = self.op
        if op.emit_refusal() is not None:
            return None
        K = op.n_heads * op.head_dim
        eq = _scratch(op.device, "attention xq", planes * K)
        ed = _scratch(op.device, "attention xd", QuantizeX.xd_bytes(K))
        d = op.device
        if self.combine is not None:
            kern = op._combine_kernel(op.splits, op.combine_wg, emit=planes, write_out=write_out)
            out = self.args[4]
            self.combine = d.bind(kern, [op.partials, *([out] if write_out else []), eq, ed])
        else:
            kern, bufs = self.step_kernel_bufs
            kern = d.kernel("attention_step", label="attention_step", **{**kern, "emit": planes})
            self.step = d.bind(kern, [*bufs, eq, ed])
        self.emits = (eq, ed)
        return eq, ed

    def with_rope(self, rope: Any, qk_norm: tuple[Any, Any] | None = None) -> "BoundAttention":
        """This attention bound again with the RoPE op recorded before it (and the per-head q/k norms before
        that), to fold where it can."""
        return self.op.bind(*self.args, rope=rope, qk_norm=qk_norm)

    @property
    def reads(self) -> tuple:
        return self.args[1:4]

    def record(self, rec: Recorder, n_tokens: int) -> None:
        op = self.op
        if not 1 <= n_tokens <= op.max_tokens:
            raise ValueError(f"attention step of {n_tokens} tokens; this op handles 1..{op.max_tokens}")
        if n_tokens == 1 and self.step is not None:
            rec.dispatch(self.step, op.n_kv_heads, op.step_tiling.splits)
            if self.combine is not None:
                rec.dispatch(self.combine, op.n_heads, -(-op.head_dim // op.combine_wg))
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
            rec.dispatch(self.prefill, -(-n_tokens // op.tq), op.n_kv_heads, op.prefill_splits)
            if self.prefill_combine is not None:
                rec.dispatch(self.prefill_combine, n_tokens * op.n_heads, -(-op.head_dim // PREFILL_COMBINE_WG))
