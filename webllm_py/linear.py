"""Linear layers and embeddings over quantized weights.

`Linear` owns a weight (and optional bias) GPUTensor and its two pipelines: the decode matvec
(one token) and the tiled prefill matmul (T > 1). `bind()` makes the bind groups once, for a
fixed set of activation buffers; `BoundLinear.record()` then only records a dispatch, which is
all a token's forward pass should cost in Python.

Activations are f32, row-major: x [T, K] in, y [T, N] out. The prefill matmul reads T from
`params[tokens_at]` (the model's step buffer {pos0, n_tokens}); the decode matvec needs none.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field, replace
from typing import Any

from .errors import UnsupportedModelError
from .formats.quants import GGMLType, layout_of, row_nbytes
from .gpu import MAX_GROUPS
from .planner import (  # noqa: F401  (tilings and tables re-exported: tests and scripts/kernel_bench.py)
    DEFAULT_POLICY,
    I8_TYPES,
    Q4_TILING,
    Q4_TYPES,
    STAGED_TYPES,
    Adapter,
    KernelPolicy,
    MatmulI8Tiling,
    MatmulRowsTiling,
    MatmulSgmatF16Tiling,
    MatmulSgmatTiling,
    MatmulTiling,
    MatvecTiling,
    StagedTiling,
    cpu_matmul_tiling,
    gpu_matmul_tiling,
    i8_tiling,
    matvec_wg,
    i8_group_tiling,
    plan_fused,
    sgmat_group_tiling,
    plan_matmul,
    plan_matvec,
    row_scale_wg,
    staged_tiling,
    subgroup_min_size,
    team_subgroups,
)
from .weights import GPUTensor


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _from(binding: Any, offset: int) -> Any:
    """A buffer binding (a Buffer or (buffer, offset, size)) from `offset` bytes on to its end."""
    if not offset:
        return binding
    buf, off, size = binding if isinstance(binding, tuple) else (binding, 0, binding.size)
    return buf, off + offset, size - offset


def _rows(bias: GPUTensor, r0: int, n: int) -> GPUTensor:
    """Elements [r0, r0 + n) of an f32 bias, bound in place."""
    b = bias.buffer
    buf, off = (b[0], b[1]) if isinstance(b, tuple) else (b, 0)
    return GPUTensor((buf, off + 4 * r0, 4 * n), GGMLType.F32, (n,), f"{bias.name}[{r0}:{r0 + n}]")


def prefill_i8_tiling(
    device: Any, qtype: GGMLType, K: int, N: int = 0, policy: KernelPolicy = DEFAULT_POLICY
) -> MatmulI8Tiling | None:
    """planner.i8_tiling for a device: the packed-dot prefill's tiling, or None where the f32 matmul stays."""
    return i8_tiling(Adapter.of(device), qtype, K, N, policy)


SPLITK_SUM_WG = 256  # splitk_sum's threads per workgroup (an output element each)


def _scratch(device: Any, role: str, nbytes: int) -> Any:
    """A device-wide scratch buffer of `nbytes` for `role`, shared by every layer that asks for the
    same size: the dispatches that write and read it are recorded in order."""
    cache = device.__dict__.setdefault("_linear_scratch", {})
    buf = cache.get((role, nbytes))
    if buf is None:
        buf = cache[(role, nbytes)] = device.create_buffer(nbytes, label=f"linear {role}")
    return buf


class Linear:
    """y = x @ W^T (+ bias) with W [N = out, K = in] in any supported ggml type."""

    def __init__(
        self,
        device: Any,
        weight: GPUTensor,
        bias: GPUTensor | None = None,
        *,
        matvec: MatvecTiling | StagedTiling | None = None,
        matmul: MatmulTiling
        | MatmulRowsTiling
        | MatmulI8Tiling
        | MatmulSgmatTiling
        | MatmulSgmatF16Tiling
        | None = None,
        tokens_at: int = 1,
        f16: bool = False,
        subgroups: bool | None = None,
        out_stride: int | None = None,
        policy: KernelPolicy = DEFAULT_POLICY,
    ) -> None:
        """matvec / matmul: a tiling to use instead of the planner's choice (planner.py), where its kernel
        applies; policy: the planner's overridable choices (Engine.load(policy=...)).
        subgroups: None uses them where the device has them (requested: NativeDevice(use_subgroups=True));
        the staged kernel's team reduction then also needs the adapter's smallest subgroup to hold a
        team (subgroup_min_size >= lanes), which True asserts instead (tests).
        A weight split into row blocks (GPUTensor.parts: one binding cannot hold it) becomes a Linear
        per block, each writing its columns of y (out_stride: y's row length, for such a block)."""
        if len(weight.shape) != 2:
            raise UnsupportedModelError(f"linear weight '{weight.name}' must be 2-D, got shape {weight.shape}")
        self.device = device
        self.weight = weight
        self.bias = bias
        self.N, self.K = weight.shape
        if self.K % 4:
            raise UnsupportedModelError(f"linear weight '{weight.name}': in_features {self.K} is not a multiple of 4")
        if bias is not None and bias.shape != (self.N,):
            raise UnsupportedModelError(f"bias '{bias.name}' shape {bias.shape} does not match {self.N} outputs")
        self.adapter = Adapter.of(device)
        self.policy = policy
        self.plan = plan_matvec(self.adapter, weight.ggml_type, self.N, self.K, bias is not None, policy, matvec)
        self.matvec_tiling = self.plan.tiling
        self.staged = self.plan.template == "matvec_q4s"
        self.q4 = self.plan.fusable
        self.matmul_plan = plan_matmul(self.adapter, weight.ggml_type, self.N, self.K, policy, matmul)
        self.matmul_tiling = self.matmul_plan.tiling
        self._params = dict(
            K=self.K,
            N=self.N,
            row_bytes=row_nbytes(weight.ggml_type, self.K),
            qtype=weight.ggml_type.name,
            has_bias=bias is not None,
        )
        if out_stride is not None:
            self._params["out_stride"] = out_stride
        self._tokens_at = tokens_at
        self._f16 = bool(f16)
        self._subgroups = device.has_subgroups if subgroups is None else subgroups
        self._subgroups_asked = subgroups is True
        self._x_uniform = self.plan.x_uniform
        # Pipelines are made on first use (accumulate or not) and cached: lavapipe compiles slowly.
        self._kernels: dict[tuple[str, bool], Any] = {}
        # Row blocks (blocks start at multiples of 64 rows: y's and the bias's binding offsets are
        # 256-byte aligned); never fused into a MatvecGroup dispatch.
        self.parts = [
            (
                r0,
                Linear(
                    device,
                    t,
                    None if bias is None else _rows(bias, r0, t.rows),
                    matvec=matvec,
                    matmul=matmul,
                    tokens_at=tokens_at,
                    f16=f16,
                    subgroups=subgroups,
                    out_stride=self.N,
                    policy=policy,
                ),
            )
            for r0, t in weight.parts
        ]
        if self.parts:
            self.q4 = self.staged = False

    def kernel(self, kind: str, accumulate: bool) -> Any:
        """The 'matvec' or 'matmul' pipeline of this layer."""
        k = self._kernels.get((kind, accumulate))
        if k is None:
            name = self.plan.template if kind == "matvec" else self.matmul_plan.template
            label = f"{name} {self.weight.name}"
            t, m = self.matvec_tiling, self.matmul_tiling
            if kind == "matvec" and self.q4:
                k = self.q4_kernel([self.N], accumulate)
            elif kind == "matvec" and isinstance(t, MatvecTiling) and name == "matvec_rows":
                params, label = self._rows_params(label, accumulate, t.shape_at_run_time)
                k = self.device.kernel(name, label=label, wg=t.wg, rows=t.rows, x_uniform=self._x_uniform, **params)
            elif kind == "matvec" and isinstance(t, MatvecTiling):
                k = self.device.kernel(
                    name,
                    label=label,
                    wg=matvec_wg(name, t, self.weight.ggml_type, self.K),
                    rows=t.rows,
                    accumulate=accumulate,
                    f16=self._f16,
                    subgroups=self._subgroups,
                    **self._params,
                )
            elif kind == "quantize" and isinstance(m, (MatmulI8Tiling, MatmulSgmatTiling)):  # x to int8 blocks
                k = self.device.kernel(
                    "quantize_i8",
                    label=f"quantize_i8 K {self.K}",
                    K=self.K,
                    wg=64,
                    planes=m.planes,
                    tokens_at=self._tokens_at,
                )
            elif kind == "quantize" and isinstance(m, MatmulSgmatF16Tiling):  # x's per-token scales
                k = self.device.kernel(
                    "row_scale",
                    label=f"row_scale K {self.K}",
                    K=self.K,
                    wg=row_scale_wg(self.adapter),
                    tokens_at=self._tokens_at,
                    x16=m.x16,
                )
            elif kind == "matmul" and isinstance(m, (MatmulI8Tiling, MatmulSgmatTiling, MatmulSgmatF16Tiling)):
                # the quantized-block prefills (matmul_i8, matmul_sgmat, matmul_sgmat_f16): their tilings, then
                # what they all read the same way
                if isinstance(m, MatmulI8Tiling):
                    tiling = i8_params(m)
                elif isinstance(m, MatmulSgmatTiling):
                    tiling = dict(sg_m=m.sg_m, sg_n=m.sg_n, ti=m.ti, tj=m.tj, kb=m.kb, planes=m.planes)
                else:  # x / s_t in (f32, or f16 from row_scale's x16), f16 tiles inside
                    tiling = sgmat_f16_params(m)
                # split-K slices write partial tiles; splitk_sum ("reduce") does the bias, += and stride
                split = isinstance(m, MatmulSgmatF16Tiling) and m.splits > 1
                k = self.device.kernel(
                    name,
                    label=label,
                    **tiling,
                    qtype=self.weight.ggml_type.name,
                    K=self.K,
                    row_bytes=self._params["row_bytes"],
                    tokens_at=self._tokens_at,
                    has_bias=self.bias is not None and not split,
                    accumulate=accumulate and not split,
                    **{k: v for k, v in self._params.items() if k == "out_stride" and not split},
                )
            elif kind == "reduce" and isinstance(m, MatmulSgmatF16Tiling):  # matmul_sgmat_f16's split-K partials
                k = self.device.kernel(
                    "splitk_sum",
                    label=f"splitk_sum {self.weight.name}",
                    N=self.N,
                    splits=m.splits,
                    wg=SPLITK_SUM_WG,
                    tokens_at=self._tokens_at,
                    has_bias=self.bias is not None,
                    accumulate=accumulate,
                    **{k: v for k, v in self._params.items() if k == "out_stride"},
                )
            elif kind == "matmul" and isinstance(m, MatmulRowsTiling):
                params, label = self._rows_params(label, accumulate, m.shape_at_run_time)
                k = self.device.kernel(
                    name,
                    label=label,
                    wg=m.wg,
                    rows=m.rows,
                    tm=m.tm,
                    tokens_at=self._tokens_at,
                    dequant_rows=m.dequant,
                    row_loop=m.row_loop,
                    **params,
                )
            elif kind == "matmul" and isinstance(m, MatmulTiling):
                k = self.device.kernel(
                    name,
                    label=label,
                    tm=m.tm,
                    tn=m.tn,
                    tk=m.tk,
                    rm=m.rm,
                    rn=m.rn,
                    tokens_at=self._tokens_at,
                    accumulate=accumulate,
                    **self._params,
                )
            else:
                raise ValueError(f"no {kind!r} kernel for {label} ({t}, {m})")
            self._kernels[(kind, accumulate)] = k
        return k

    def _rows_params(self, label: str, accumulate: bool, shared: bool) -> tuple[dict, str]:
        """matvec_rows' / matmul_rows' template parameters and label; `shared` (shape_at_run_time): K, row
        bytes and accumulate come from a `shape` binding (bind), and the source holds a representative K
        of the same unit layout (an even or an odd number of blocks), so every K of that layout shares it."""
        params = dict(self._params, accumulate=accumulate)
        if not shared:
            return params, label
        qtype = self.weight.ggml_type
        block = layout_of(qtype).block_size
        k_rep = block * (2 - (self.K // block) % 2)
        params.update(K=k_rep, row_bytes=row_nbytes(qtype, k_rep), accumulate=False, shape_at_run_time=True)
        return params, f"{label.split()[0]} {qtype.name}"

    def _shape(self, accumulate: bool) -> Any:
        """The `shape` binding of a shape_at_run_time kernel: K, row bytes, accumulate (u32 each)."""
        shape = struct.pack("<3I", self.K, self._params["row_bytes"], int(accumulate))
        return self.device.buffer_from(shape, label=f"shape {self.weight.name}")

    def q4_kernel(
        self,
        parts: list[int],
        accumulate: bool,
        glu: str | None = None,
        norm: Any = None,
        tiling: StagedTiling | MatvecTiling | None = None,
        emit_next: Any = None,
        emit_planes: int = 1,
        members: list["Linear"] | None = None,
    ) -> Any:
        """matvec_q4 (or matvec_q4s) for this layer's type and K over matrices of `parts` rows (see
        MatvecGroup); members: the linears of those parts where their types differ (each matrix's type and
        row bytes); norm: an ops.RMSNorm applied to x on the way in; tiling: the staged kernel's,
        instead of this layer's; emit_next: the next RMSNorm (an ops.RMSNorm) whose input this matvec's
        output is, or True where the next matvec reads that output as it is (glu: a fused gate/up's output,
        w_down's x): its epilogue also writes that x quantized (times the norm's weights) for a prestaged
        matvec of emit_planes planes, in ops.QuantizeX's layout (staged tilings of 32 rows a workgroup:
        StagedTiling.emit_refusal; bind the norm's weights, where there is a norm, and the (xq, xd) after y)."""
        nparams: dict[str, Any] = (
            dict(norm=True, eps=norm.params["eps"], w_offset=norm.params["weight_offset"]) if norm else dict(norm=False)
        )
        t = tiling or self.matvec_tiling
        if emit_next is not None:
            why = (
                t.emit_refusal(self.K, list(parts), accumulate, glu)
                if isinstance(t, StagedTiling)
                else "emit_next needs a staged tiling"
            )
            if why:
                raise ValueError(f"{self.weight.name}: {why}")
            nparams.update(emit_next=True, emit_planes=emit_planes, emit_norm=emit_next is not True)
            if emit_next is not True:
                nparams.update(emit_w_offset=emit_next.params["weight_offset"])
        if isinstance(t, StagedTiling):
            lanes = t.lanes_for(self.K)
            sg = self._subgroups and (self._subgroups_asked or team_subgroups(self.adapter, lanes))
            return self.device.kernel(
                "matvec_q4s",
                label=f"matvec_q4s {self.weight.name}",
                wg=t.wg,
                lanes=lanes,
                rows=t.rows,
                prefetch=t.prefetch,
                planes=t.planes,
                prestaged=t.prestaged,
                subgroups=sg,
                qtype=self.weight.ggml_type.name,
                K=self.K,
                parts=list(parts),
                row_bytes=self._params["row_bytes"],
                accumulate=accumulate,
                glu=glu,
                **nparams,
                **_mixed_types(members),
            )
        return self.device.kernel(
            "matvec_q4",
            label=f"matvec_q4 {self.weight.name}",
            wg=matvec_wg("matvec_q4", t, self.weight.ggml_type, self.K),
            rows=t.rows,
            subgroups=self._subgroups,
            qtype=self.weight.ggml_type.name,
            K=self.K,
            parts=list(parts),
            row_bytes=self._params["row_bytes"],
            accumulate=accumulate,
            glu=glu,
            **nparams,
            **_mixed_types(members),
        )

    def bind(self, x: Any, y: Any, params: Any | None = None, accumulate: bool = False) -> "BoundLinear":
        """Bind groups for fixed buffers x [>=T, K] and y [>=T, N]; `params` is needed for T > 1."""
        if self.parts:
            parts = [lin.bind(x, _from(y, 4 * r0), params, accumulate) for r0, lin in self.parts]
            return BoundLinear(self, None, None, accumulate, parts, x=x, y=y)
        w = self.weight.buffer
        extra = [self.bias.buffer] if self.bias is not None else []
        mv_x = (x, 0, 4 * self.K) if self._x_uniform else x  # a uniform binding holds one token's x
        t = self.matvec_tiling
        mv_shape = [self._shape(accumulate)] if isinstance(t, MatvecTiling) and t.shape_at_run_time else []
        pre = self.prestage(x) if self.staged and isinstance(t, StagedTiling) and t.prestaged else None
        mv_ins = list(pre.writes) if pre else [mv_x]
        mv = self.device.bind(self.kernel("matvec", accumulate), [w, *mv_ins, y, *extra, *mv_shape])
        if params is None:
            return BoundLinear(self, mv, None, accumulate, x=x, y=y, prestage=pre)
        if self.matmul_plan.template in ("matmul_i8", "matmul_sgmat"):
            # x as int8 blocks for as many tokens as x holds: words [T, K / 4], (d, d * sum q) [T, K / 32]
            tokens = x.size // (4 * self.K)
            planes = (
                self.matmul_tiling.planes if isinstance(self.matmul_tiling, (MatmulI8Tiling, MatmulSgmatTiling)) else 2
            )
            xq, xd = (
                _scratch(self.device, "xq", tokens * self.K * planes),
                _scratch(self.device, "xd", tokens * self.K // 4),
            )
            quant = self.device.bind(self.kernel("quantize", False), [x, xq, xd, params])
            mm = self.device.bind(self.kernel("matmul", accumulate), [w, xq, xd, y, params, *extra])
            return BoundLinear(
                self, mv, mm, accumulate, quant=quant, x=x, y=y, prestage=pre, params=params, x_in=(xq, xd)
            )
        if self.matmul_plan.template == "matmul_sgmat_f16":
            # x's per-token power-of-two scales (s_t, 1 / s_t) for as many tokens as x holds
            tokens = x.size // (4 * self.K)
            scale = _scratch(self.device, "xscale", 8 * tokens)
            mt = self.matmul_tiling
            if isinstance(mt, MatmulSgmatF16Tiling) and mt.x16:  # the pass also writes f16(x / s_t), the matmul's x
                xs = _scratch(self.device, "x16", 2 * tokens * self.K)
                quant = self.device.bind(self.kernel("quantize", False), [x, scale, params, xs])
            else:
                xs = x
                quant = self.device.bind(self.kernel("quantize", False), [x, scale, params])
            splits = mt.splits if isinstance(mt, MatmulSgmatF16Tiling) else 1
            if splits == 1:
                mm = self.device.bind(self.kernel("matmul", accumulate), [w, xs, scale, y, params, *extra])
                return BoundLinear(
                    self, mv, mm, accumulate, quant=quant, x=x, y=y, prestage=pre, params=params, x_in=(xs, scale)
                )
            # split-K: partial tiles [splits, T, N] in a scratch the next split matmul may reuse
            part = _scratch(self.device, "splitk", 4 * splits * tokens * self.N)
            mm = self.device.bind(self.kernel("matmul", False), [w, xs, scale, part, params])
            red = self.device.bind(self.kernel("reduce", accumulate), [part, y, params, *extra])
            return BoundLinear(self, mv, mm, accumulate, quant=quant, x=x, y=y, reduce=red, prestage=pre)
        if isinstance(self.matmul_tiling, MatmulRowsTiling) and self.matmul_tiling.shape_at_run_time:
            extra.append(self._shape(accumulate))
        mm = self.device.bind(self.kernel("matmul", accumulate), [w, x, y, params, *extra])
        return BoundLinear(self, mv, mm, accumulate, x=x, y=y, prestage=pre)

    def prestage(self, x: Any, norm: Any = None, planes: int | None = None) -> Any:
        """The bound ops.QuantizeX of one token's x (norm: the RMSNorm folded in) into the device-wide
        scratch (xq, xd) a prestaged staged matvec (StagedTiling.prestaged) reads: its writes."""
        from .ops import QuantizeX

        t = self.matvec_tiling
        planes = (t.planes if isinstance(t, StagedTiling) else 1) if planes is None else planes
        q = QuantizeX(self.device, self.K, planes, norm=norm)
        return q.bind(
            x,
            _scratch(self.device, "prestaged xq", planes * self.K),
            _scratch(self.device, "prestaged xd", QuantizeX.xd_bytes(self.K)),
        )


@dataclass(eq=False)
class BoundLinear:
    """A Linear bound to x and y: the decode matvec's and the prefill matmul's bind groups."""

    linear: Linear
    matvec: Any
    matmul: Any | None = field(default=None)
    accumulate: bool = False
    parts: list["BoundLinear"] = field(default_factory=list)  # one per row block of a split weight
    quant: Any | None = None  # the bind group of the pass over x before the matmul (x_pass)
    x: Any = None  # the activations it reads and writes (bind's x and y)
    y: Any = None
    reduce: Any | None = None  # splitk_sum's bind group: a split matmul_sgmat_f16's partial tiles into y
    prestage: Any = None  # single tokens: the QuantizeX BoundOp recorded before a prestaged matvec
    emits: tuple | None = None  # emit_into's (norm, planes, xq, xd): the next group's x it writes
    taken: tuple | None = None  # take_x's (xq, xd): its own x, quantized by the op before
    # matmul_i8's and matmul_sgmat_f16's (one slice), for a fused group's one matmul (MatvecGroup): the prompt's
    # params, and what its matmul reads x from (quantize_i8's xq, xd; row_scale's f16 x or x, and the scales)
    params: Any = None
    x_in: tuple = ()

    @property
    def reads(self) -> tuple:
        return (self.x,)

    @property
    def writes(self) -> tuple:
        return (self.y,)

    def emit_into(self, norm: Any, planes: int) -> tuple[Any, Any] | None:
        """Make this single-token matvec (a residual add) also write the next norm's input quantized for
        a prestaged matvec of `planes` planes (matvec_q4s's emit_next; norm: that ops.RMSNorm), into the
        device-wide (xq, xd) it returns; None where its kernel cannot (StagedTiling.emit_refusal).
        The producer itself then quantizes its own x in its workgroups (no QuantizeX dispatch before it):
        on the H200 a QuantizeX + prestaged wo / w_down ran 2-3.5 us slower than the self-staging kernel
        at the 1B and 8B shapes (docs/benchmarks.md, "H200: x quantized once per token")."""
        lin, t = self.linear, self._staged()
        if t is None or t.emit_refusal(lin.K, [lin.N], self.accumulate, None):
            return None
        from .ops import QuantizeX

        eq = _scratch(lin.device, "emitted xq", planes * lin.N)
        ed = _scratch(lin.device, "emitted xd", QuantizeX.xd_bytes(lin.N))
        self.emits = (norm, planes, eq, ed)
        self._rebind()
        return eq, ed

    def _staged(self) -> StagedTiling | None:
        """The staged kernel's tiling of this single-token matvec, or None where it runs another kernel (or is
        split, or has a bias): where x may come prestaged (take_x, x_planes) or the epilogue emit (emit_into)."""
        lin, t = self.linear, self.linear.matvec_tiling
        if self.parts or not isinstance(t, StagedTiling) or not lin.staged or lin.bias is not None:
            return None
        return t

    def taken_planes(self) -> int | None:
        """The int8 planes of x this single-token matvec would read prestaged (take_x), or None where its
        kernel is not the staged one (or is split, or has a bias)."""
        t = self._staged()
        return None if t is None else t.planes

    def take_x(self, xq: Any, xd: Any) -> None:
        """Read x quantized by the op before (attention's or a fused gate/up's emit_into: BoundAttention /
        MatvecGroup.emit_into) in ops.QuantizeX's layout: matvec_q4s prestaged, with no QuantizeX dispatch
        before it; its emit_next (emit_into, before or after) kept."""
        assert self.taken_planes() is not None
        self.taken = (xq, xd)
        self._rebind()

    def _rebind(self) -> None:
        """The single-token matvec bound again for what emit_into and take_x set (the one place that binds
        their forms): x from `taken` (prestaged) or staged from `x` itself, and `emits`' epilogue."""
        lin, t = self.linear, self._staged()
        assert t is not None
        norm, planes, eq, ed = self.emits or (None, 1, None, None)
        k = lin.q4_kernel(
            [lin.N],
            self.accumulate,
            tiling=replace(t, prestaged=self.taken is not None),
            emit_next=norm,
            emit_planes=planes,
        )
        xs = list(self.taken) if self.taken is not None else [self.x]
        emitted = [norm.weight, eq, ed] if norm is not None else []
        self.matvec = lin.device.bind(k, [lin.weight.buffer, *xs, self.y, *emitted])
        self.prestage = None

    def x_planes(self, norm: Any = None) -> int | None:
        """The planes of x this single-token matvec reads prequantized (its QuantizeX before it), where a
        producer may write that x instead, with `norm` (the ops.RMSNorm before it) folded in (reading_emitted);
        else None."""
        t, lin = self._staged(), self.linear
        if self.prestage is None or t is None or not t.prestaged:
            return None
        if norm is not None and norm.params["dim"] != lin.K:
            return None
        return t.planes

    def reading_emitted(self, norm: Any, xq: Any, xd: Any) -> "BoundLinear | None":
        """A copy of this single-token matvec (one with x_planes) that reads x quantized by the op before
        (BoundLinear.emit_into's (xq, xd): x * (nw + w_offset) with each block's sum of x^2) and folds in
        `norm` (the ops.RMSNorm whose input that x is), instead of its QuantizeX of the normed x: the LM head
        after the final norm, which then runs no dispatch of its own for one token. None where x_planes(norm)
        is (a bias, a norm of another width)."""
        lin = self.linear
        if self.x_planes(norm) is None:
            return None
        k = lin.q4_kernel([lin.N], self.accumulate, norm=norm)
        return replace(self, matvec=lin.device.bind(k, [lin.weight.buffer, xq, xd, self.y]), prestage=None)

    @property
    def x_pass(self) -> tuple | None:
        """What this linear's prefill makes of x in a pass before its matmul, where it has one: quantize_i8's
        int8 blocks (matmul_i8 / matmul_sgmat: x, K and the planes) or row_scale's per-token scales
        (matmul_sgmat_f16: x, K), which pick the shared scratch (_scratch is keyed by role and size); else None."""
        if self.parts:  # a split weight: its row blocks read the one x (record_in_turn passes over it once)
            return self.parts[0].x_pass
        t = self.linear.matmul_tiling
        if self.quant is None:
            return None
        if isinstance(t, MatmulSgmatF16Tiling):  # with x16 the pass also writes the f16 x the matmul reads
            return (id(self.x), self.linear.K, "row_scale", t.x16)
        return (id(self.x), self.linear.K, t.planes) if isinstance(t, (MatmulI8Tiling, MatmulSgmatTiling)) else None

    def record_x_pass(self, rec: Any, n_tokens: int) -> None:
        """Record the pass over x its prompt's matmul reads (x_pass): quantize_i8's int8 blocks (a workgroup per 64
        blocks of a token) or row_scale's per-token scales (a workgroup a token)."""
        per_token = (
            1 if isinstance(self.linear.matmul_tiling, MatmulSgmatF16Tiling) else _ceil_div(self.linear.K // 32, 64)
        )
        rec.dispatch(self.quant, per_token, n_tokens)

    def record(self, rec: Any, n_tokens: int, x_passed: bool = False) -> None:
        """Record y = x @ W^T for `n_tokens` rows of x; params[tokens_at] must hold n_tokens when it runs.
        x_passed: the scratch already holds this x's pass (a linear just before read the same x: x_pass)."""
        if self.parts:
            record_in_turn(self.parts, rec, n_tokens, self.x_pass if x_passed else None)
            return
        lin = self.linear
        if n_tokens == 1:
            if self.prestage is not None:
                self.prestage.record(rec, 1)
            groups = lin.matvec_tiling.groups(lin.N, lin.K)
            z = _ceil_div(groups, MAX_GROUPS)  # past 65535 groups the grid spills into z
            rec.dispatch(self.matvec, _ceil_div(groups, z), 1, z)
            return
        if self.matmul is None:
            raise ValueError("Linear.bind() was given no params buffer, so it can only record single tokens")
        t = lin.matmul_tiling
        if isinstance(t, (MatmulI8Tiling, MatmulSgmatTiling)):  # matmul_i8 / matmul_sgmat, after x's quantization
            if not x_passed:
                self.record_x_pass(rec, n_tokens)
            rec.dispatch(self.matmul, *t.groups(lin.N, n_tokens))
            return
        if isinstance(t, MatmulSgmatF16Tiling):  # matmul_sgmat_f16, after x's per-token scales (a row each)
            if not x_passed:
                self.record_x_pass(rec, n_tokens)
            rec.dispatch(self.matmul, *t.groups(lin.N, n_tokens))
            if self.reduce is not None:
                rec.dispatch(self.reduce, _ceil_div(lin.N, SPLITK_SUM_WG), n_tokens)
            return
        if isinstance(t, MatmulRowsTiling):  # matmul_rows
            rec.dispatch(self.matmul, _ceil_div(lin.N, t.wg * t.rows), _ceil_div(n_tokens, t.tm))
            return
        rec.dispatch(self.matmul, _ceil_div(lin.N, t.tn), _ceil_div(n_tokens, t.tm))


def i8_params(m: MatmulI8Tiling) -> dict[str, Any]:
    """matmul_i8.wgsl.j2's tiling parameters for a tile."""
    return dict(stage=m.stage, tm=m.tm, tn=m.tn, rm=m.rm, rn=m.rn, wg=m.wg, kb=m.kb, pf=m.pf, planes=m.planes)


def sgmat_f16_params(m: MatmulSgmatF16Tiling) -> dict[str, Any]:
    """matmul_sgmat_f16.wgsl.j2's tiling parameters for a tile, with x copied as f16 where it says x16."""
    return dict(
        sg_m=m.sg_m,
        sg_n=m.sg_n,
        ti=m.ti,
        tj=m.tj,
        kb=m.kb,
        db=m.db,
        pf=m.pf,
        splits=m.splits,
        sgc=m.sgc,
        out_turns=m.out_turns,
        **({"xsrc": "f16"} if m.x16 else {}),
    )


def record_in_turn(linears: list[BoundLinear], rec: Any, n_tokens: int, passed: tuple | None = None) -> None:
    """Record linears that read one x one after another (a group's members, a split weight's row blocks):
    where consecutive ones pass over x alike before their matmuls (x_pass: the int8 prefills' quantize_i8,
    matmul_sgmat_f16's row_scale), only the first dispatches that pass and the rest read the shared
    scratch. `passed`: what the scratch already holds."""
    for b in linears:
        key = b.x_pass
        b.record(rec, n_tokens, x_passed=key is not None and key == passed)
        passed = key


def _mixed_types(members: list[Linear] | None) -> dict[str, Any]:
    """matvec_q4(s)'s per-matrix types and row bytes where `members` are of more than one type, else nothing."""
    if not members or len({m.weight.ggml_type for m in members}) == 1:
        return {}
    return dict(qtypes=[m.weight.ggml_type.name for m in members], rows_bytes=[m._params["row_bytes"] for m in members])


class MatvecGroup:
    """Linears that read the same x, recorded as one dispatch for a single token where the aligned
    4-bit kernel can fuse them (Q/K/V; gate and up with the GLU applied on the way out), and one by
    one otherwise (prefill, other types, biases, CPU adapters). The fusion pass over a layer's ops
    (models/layer.py) makes them; tests and benches may too:

        MatvecGroup([wq, wk, wv])                      # y_q, y_k, y_v in one dispatch
        MatvecGroup([w_gate, w_up], glu=("silu", op))  # op: the ops.GLU BoundOp it replaces
        MatvecGroup([wq, wk, wv], norm=attn_norm)      # attn_norm: the ops.RMSNorm BoundOp writing x

    With `norm`, the fused dispatch reads the norm's input and normalises on the way (the norm's
    own dispatch is then skipped for single tokens: it marks itself `absorbed`); the layer still
    records the norm first, and it runs for prefill. Members of different types (a Q6_K attn_v beside Q4_K
    q and k) fuse where their kernel, K and tiling agree; otherwise members of different kernel variants fuse
    in runs, one dispatch each, every run folding the norm.
    """

    def __init__(self, members: list["BoundLinear"], glu: tuple[str, Any] | None = None, norm: Any = None) -> None:
        self.members, self.glu = members, glu
        lins = [b.linear for b in members]
        first = lins[0]
        # (bind group, workgroups, the QuantizeX BoundOp before a prestaged one) of each fused dispatch
        self.runs: list[tuple[Any, int, Any]] = []
        # each run's kernel and bindings: (the run's linears, the first leading, parts, tiling, folded ops.RMSNorm
        # or None, weights, inputs (x [and the norm's weights], or the QuantizeX's xq, xd), outputs)
        self._specs: list[tuple[list, list[int], Any, Any, list, list, list]] = []
        self.norm: Any = None  # the norm BoundOp folded in
        self.taken: tuple | None = None  # take_x's (xq, xd): x quantized by the op before
        self.emits: tuple | None = None  # emit_into's (planes, xq, xd): w_down's x its GLU epilogue writes

        # Members fuse in runs of one kernel variant (K, tiling, subgroups; types may differ but for a GLU):
        # a real Q4_K_M file keeps attn_v in Q6_K (Gemma-3's: Q8_0 beside Q5_0 q and k) in some layers, whose
        # Q/K/V still run as one dispatch, each matrix's workgroups on their type's branch. Gate and up fuse
        # only together (the GLU needs both) and of one type.
        def variant(l):
            return (l.weight.ggml_type if glu else None, l.K, l.matvec_tiling, l._subgroups)

        spans: list[list[int]] = []
        for i, l in enumerate(lins):
            if spans and variant(lins[spans[-1][-1]]) == variant(l):
                spans[-1].append(i)
            else:
                spans.append([i])
        ok = (
            all(l.q4 and not b.accumulate for l, b in zip(lins, members))
            and len({id(b.x) for b in members}) == 1
            and 1 <= len(lins) <= 3
            and (glu is None or (len(spans) == 1 and len(lins) == 2 and lins[0].N == lins[1].N))
        )
        # a norm folds in when it is a plain RMSNorm of one row per token writing this x, and every
        # run's kernel can fold it (the norm's own dispatch is then skipped for single tokens)
        rms = getattr(norm, "norm", None)
        fold = (
            ok
            and rms is not None
            and norm.writes[0] is members[0].x
            and rms.params["dim"] == first.K
            and all(lins[sp[0]].K <= lins[sp[0]].policy.fold_norm_max_k or lins[sp[0]].staged for sp in spans)
        )
        if ok:
            act = glu[0] if glu else None
            for sp in spans:
                span = [lins[i] for i in sp]
                lead = span[0]
                parts = [l.N for l in span]
                outs = [glu[1].writes[0]] if glu else [members[i].y for i in sp]
                t = (
                    plan_fused(
                        lead.adapter, lead.plan, lead.weight.ggml_type, lead.N, lead.K, lead.policy, glu=bool(glu)
                    )
                    if glu or len(span) > 1
                    else lead.matvec_tiling
                )
                k = lead.q4_kernel(parts, False, glu=act, norm=rms if fold else None, tiling=t, members=span)
                ins = [norm.reads[0], norm.norm.weight] if fold else [members[0].x]
                pre = None
                if (
                    lead.staged and isinstance(t, StagedTiling) and t.prestaged
                ):  # x (with the norm folded in) quantized once, before the dispatch
                    pre = lead.prestage(ins[0], rms if fold else None, t.planes)
                    ins = list(pre.writes)
                groups = t.groups(parts[0], lead.K) if glu else sum(t.groups(n, lead.K) for n in parts)
                wbufs = [l.weight.buffer for l in span]
                self.runs.append((lead.device.bind(k, wbufs + ins + outs), groups, pre))
                self._specs.append((span, parts, t, rms if fold else None, wbufs, ins, outs))
            if fold:
                norm.absorbed = True
                self.norm = norm
        self.prefill_group = self._bind_prefill_group()

    def _bind_prefill_group(self) -> tuple[Any, MatmulI8Tiling | MatmulSgmatF16Tiling, int] | None:
        """The prompt's group as one matmul dispatch (matmul_sgmat_f16 or matmul_i8: planner.sgmat_group_tiling,
        i8_group_tiling): gate and up with the GLU in its epilogue (the templates' glu), or Q/K/V (their mats):
        (its bind group, its tile, its workgroups along x), recorded after the first member's
        pass over x, where all members run that kernel in one slice on one x, of one type and K (gate and up also of
        one N), without bias, row blocks or y +=, and the planner has a tile for all their rows that reads x as
        theirs do (x16 / planes); else None."""
        members, glu = self.members, self.glu
        if not (glu and len(members) == 2) and not (glu is None and 2 <= len(members) <= 3):
            return None
        lins = [b.linear for b in members]
        lg = lins[0]
        if not all(
            b.params is not None and not b.parts and not b.accumulate and b.linear.bias is None for b in members
        ) or not all(
            b.x is members[0].x and (l.weight.ggml_type, l.K) == (lg.weight.ggml_type, lg.K)
            for b, l in zip(members, lins)
        ):
            return None
        if glu and lins[1].N != lg.N:
            return None
        m, qtype, device = lg.matmul_tiling, lg.weight.ggml_type, lg.device
        rows = [l.N for l in lins]
        # x as the first member's pass over it wrote it (the fused tile must read it alike: x16, planes)
        ins = list(members[0].x_in)
        t: MatmulI8Tiling | MatmulSgmatF16Tiling | None
        if isinstance(m, MatmulSgmatF16Tiling):
            t = sgmat_group_tiling(lg.adapter, qtype, lg.K, rows, lg.policy, glu=bool(glu))
            if t is None or t.x16 != m.x16:
                return None
            name, tiling = "matmul_sgmat_f16", sgmat_f16_params(t)
        elif isinstance(m, MatmulI8Tiling) and lg.matmul_plan.template == "matmul_i8":
            t = i8_group_tiling(lg.adapter, qtype, lg.K, rows, lg.policy, glu=bool(glu))
            if t is None or t.planes != m.planes:
                return None
            name, tiling = "matmul_i8", i8_params(t)
        else:
            return None
        form = {"glu": glu[0]} if glu else {"mats": len(members)}
        k = device.kernel(
            name,
            label=f"{name} {'glu' if glu else 'mats'} {lg.weight.name}",
            **tiling,
            qtype=qtype.name,
            K=lg.K,
            row_bytes=lg._params["row_bytes"],
            tokens_at=lg._tokens_at,
            has_bias=False,
            accumulate=False,
            **form,
        )
        if glu:
            bufs = [lg.weight.buffer, *ins, glu[1].writes[0], members[0].params, lins[1].weight.buffer]
            gx = t.groups(2 * lg.N, 1)[0]
        else:
            bufs = [lg.weight.buffer, *ins, members[0].y, members[0].params]
            for b in members[1:]:
                bufs += [b.linear.weight.buffer, b.y]
            gx = sum(t.groups(n, 1)[0] for n in rows)
        return device.bind(k, bufs), t, gx

    def x_planes(self) -> int | None:
        """The planes of x its fused dispatches read prequantized (a QuantizeX of its folded norm's input
        before each), where a producer's epilogue may write that x instead (take_x); else None."""
        planes = {getattr(spec[2], "planes", 0) for spec in self._specs}  # 0: matvec_q4 (never prestaged)
        if not self.runs or any(pre is None for _, _, pre in self.runs) or self.norm is None or len(planes) != 1:
            return None
        return planes.pop()

    def take_x(self, xq: Any, xd: Any) -> None:
        """Read x quantized by the op before (BoundLinear.emit_into) instead of QuantizeX dispatches."""
        self.taken = (xq, xd)
        self._rebind()

    def emit_into(self, planes: int) -> tuple[Any, Any] | None:
        """Make the single-token fused gate/up also write its GLU output quantized, as w_down's prestaged x of
        `planes` planes (matvec_q4s's emit_next with glu: the q8_block rule, no norm, ops.QuantizeX's layout),
        into the device-wide (xq, xd) it returns (BoundLinear.take_x reads them); the f32 output is still
        written (prefill's GLU path, and any other reader). None where it cannot: not one staged glu dispatch,
        or its tiling has no 32 rows a workgroup (StagedTiling.emit_refusal; planner.plan_fused gives
        one where KernelPolicy.glu_emit asks)."""
        if not self.glu or len(self._specs) != 1:
            return None
        (lead, *_), parts, t, *_ = self._specs[0]
        if not (lead.staged and isinstance(t, StagedTiling)) or t.emit_refusal(lead.K, parts, False, self.glu[0]):
            return None
        from .ops import QuantizeX

        H = parts[0]
        self.emits = (
            planes,
            _scratch(lead.device, "glu xq", planes * H),
            _scratch(lead.device, "glu xd", QuantizeX.xd_bytes(H)),
        )
        self._rebind()
        return self.emits[1], self.emits[2]

    def _rebind(self) -> None:
        """Every fused dispatch bound again for what take_x and emit_into set (the one place that binds their
        forms): x from `taken` (no QuantizeX before it) or as first bound, and `emits`' epilogue."""
        planes, *emitted = self.emits or (1,)
        runs = []
        for (span, parts, t, rms, wbufs, ins, outs), (_, groups, pre) in zip(self._specs, self.runs):
            lead = span[0]
            k = lead.q4_kernel(
                parts,
                False,
                glu=self.glu[0] if self.glu else None,
                norm=rms,
                tiling=t,
                emit_next=True if self.emits else None,
                emit_planes=planes,
                members=span,
            )
            xs = list(self.taken) if self.taken is not None else ins
            runs.append((lead.device.bind(k, wbufs + xs + outs + emitted), groups, None if self.taken else pre))
        self.runs = runs

    @property
    def fused(self) -> Any:
        """The first fused dispatch's bind group (None: the members are recorded one by one)."""
        return self.runs[0][0] if self.runs else None

    @property
    def groups(self) -> int:
        return self.runs[0][1]

    def record(self, rec: Any, n_tokens: int) -> None:
        if n_tokens == 1 and self.runs:
            for bind_group, groups, pre in self.runs:
                if pre is not None:
                    pre.record(rec, 1)
                z = _ceil_div(groups, MAX_GROUPS)
                rec.dispatch(bind_group, _ceil_div(groups, z), 1, z)
            return
        if self.prefill_group is not None:  # one matmul for all members (and the GLU), after the pass over x
            fused, t, gx = self.prefill_group
            self.members[0].record_x_pass(rec, n_tokens)
            rec.dispatch(fused, gx, *t.groups(1, n_tokens)[1:])
            return
        # Prefill: members one by one (each run of matmuls passing over x alike passes once: record_in_turn).
        record_in_turn(self.members, rec, n_tokens)
        if self.glu:
            self.glu[1].record(rec, n_tokens)


class Embedding:
    """out[t, :] = W[ids[t], :] * scale for a [V, D] table in any supported ggml type."""

    def __init__(
        self,
        device: Any,
        weight: GPUTensor,
        scale: float = 1.0,
        wg: int = 64,
        first_row: int = 0,
        partial: bool = False,
    ) -> None:
        """partial: `weight` is rows [first_row, first_row + V) of a table split over several buffers
        (one storage binding is too small for it); other ids leave their output rows to the other parts.
        A weight split into row blocks (GPUTensor.parts) becomes such a partial Embedding per block."""
        if len(weight.shape) != 2:
            raise UnsupportedModelError(f"embedding '{weight.name}' must be 2-D, got shape {weight.shape}")
        self.device = device
        self.weight = weight
        self.V, self.D = weight.shape
        if self.D % 4:
            raise UnsupportedModelError(f"embedding '{weight.name}': width {self.D} is not a multiple of 4")
        self.wg = wg
        self.parts = [Embedding(device, t, scale, wg, first_row=r0, partial=True) for r0, t in weight.parts]
        if self.parts:
            return
        self._params = dict(
            D=self.D,
            V=self.V,
            row_bytes=row_nbytes(weight.ggml_type, self.D),
            qtype=weight.ggml_type.name,
            wg=wg,
            scale=float(scale),
            first_row=first_row,
            partial=partial,
        )
        self._kernel = device.kernel("embedding", label=f"embedding {weight.name}", **self._params)

    def bind(self, ids: Any, out: Any) -> "BoundEmbedding | BoundParts":
        if self.parts:
            return BoundParts([p.bind(ids, out) for p in self.parts])
        return BoundEmbedding(self, self.device.bind(self._kernel, [self.weight.buffer, ids, out]), ids=ids, out=out)


@dataclass(eq=False)
class BoundEmbedding:
    embedding: Embedding
    bind_group: Any
    ids: Any = None  # the buffers it was bound to
    out: Any = None
    emit: Any = None  # single tokens: the bind group of the form that also writes x quantized (emit_into)

    def emit_into(self, norm: Any, planes: int) -> tuple[Any, Any] | None:
        """Make the single-token lookup also write its row quantized for the first layer's prestaged matvec
        of `planes` planes with `norm` (an ops.RMSNorm of this width) folded in: x * (nw + w_offset) as int8
        blocks with each block's sum of x^2, QuantizeX's layout and rule (embedding.wgsl.j2's emit), into
        the device-wide (xq, xd) it returns (BoundLinear.emit_into's: the ops after it write them in turn);
        None where the width is not a whole number of 256-blocks or the norm is of another width."""
        e = self.embedding
        if e.D % 256 or norm.params["dim"] != e.D or e._params["partial"]:
            return None
        from .ops import QuantizeX

        eq = _scratch(e.device, "emitted xq", planes * e.D)
        ed = _scratch(e.device, "emitted xd", QuantizeX.xd_bytes(e.D))
        k = e.device.kernel(
            "embedding",
            label=f"embedding+x {e.weight.name}",
            **e._params,
            emit=True,
            emit_planes=planes,
            emit_w_offset=norm.params["weight_offset"],
        )
        self.emit = e.device.bind(k, [e.weight.buffer, self.ids, self.out, norm.weight, eq, ed])
        return eq, ed

    def record(self, rec: Any, n_tokens: int) -> None:
        e = self.embedding
        if n_tokens == 1 and self.emit is not None:
            rec.dispatch(self.emit, _ceil_div(e.D // 32, e.wg))
            return
        rec.dispatch(self.bind_group, _ceil_div(e.D // 4, e.wg), n_tokens)


@dataclass(eq=False)
class BoundParts:
    """The ops over the row blocks of one split matrix (GPUTensor.parts), recorded in turn."""

    parts: list[Any]

    def record(self, rec: Any, n_tokens: int) -> None:
        for p in self.parts:
            p.record(rec, n_tokens)
