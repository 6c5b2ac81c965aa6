"""Linear layers and embeddings over quantized weights.

`Linear` owns a weight (and optional bias) GPUTensor and its two pipelines: the decode matvec
(one token) and the tiled prefill matmul (T > 1). `bind()` makes the bind groups once, for a
fixed set of activation buffers; `BoundLinear.record()` then only records a dispatch, which is
all a token's forward pass should cost in Python.

Activations are f32, row-major: x [T, K] in, y [T, N] out. The prefill matmul reads T from
`params[tokens_at]` (the model's step buffer {pos0, n_tokens}); the decode matvec needs none.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from .errors import UnsupportedModelError
from .formats.quants import GGMLType, row_nbytes
from .weights import GPUTensor


MAX_GROUPS = 65535  # WebGPU's default maxComputeWorkgroupsPerDimension


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


@dataclass(frozen=True)
class MatvecTiling:
    wg: int = 64  # threads per workgroup
    rows: int = 2  # rows per workgroup (split_k) or per thread
    split_k: bool = True  # threads split K and reduce; False suits CPU adapters (no barriers)

    def groups(self, n: int, K: int = 0) -> int:
        return _ceil_div(n, self.rows if self.split_k else self.rows * self.wg)


# The aligned 4-bit kernel (matvec_q4.wgsl.j2, Q4_0 / Q4_1 / Q4_K): threads and rows per workgroup.
Q4_TILING = MatvecTiling(wg=64, rows=4)
Q4_TYPES = (GGMLType.Q4_0, GGMLType.Q4_1, GGMLType.Q4_K)
# The staged kernel (matvec_q4s.wgsl.j2) also takes Q8_0 (int8 weights: one dot4I8Packed a word)
# and Q6_K (its unaligned super-blocks funnel-shifted into place); where it does not apply, these
# have only the generic matvec (matvec_q4 is 4-bit only).
STAGED_TYPES = Q4_TYPES + (GGMLType.Q8_0, GGMLType.Q6_K)
# MatvecGroup folds a preceding RMSNorm into matvec_q4's dispatch only for rows this short: at
# K = 4096 the fold's extra per-unit work cost more than the norm's dispatch on an H100
# (docs/benchmarks.md). The staged kernel below folds it at any K (it normalises x once per workgroup).
FOLD_NORM_MAX_K = 0


@dataclass(frozen=True)
class StagedTiling:
    """matvec_q4s.wgsl.j2: x staged as int8 in workgroup memory; teams of `lanes` threads own
    `rows` rows each and split K into 256-weight units."""
    wg: int = 256  # threads per workgroup
    lanes: int = 8  # threads per row (at most K / 256)
    rows: int = 1  # rows per team
    prefetch: bool = False  # load a lane's next unit while the current one's math runs

    split_k = True  # (threads split K, as MatvecTiling's split_k)

    def rows_per_group(self, K: int) -> int:
        return (self.wg // self.lanes_for(K)) * self.rows

    def lanes_for(self, K: int) -> int:
        return min(self.lanes, 1 << ((K // 256).bit_length() - 1))

    def groups(self, n: int, K: int) -> int:
        return _ceil_div(n, self.rows_per_group(K))


# The staged kernel on GPUs where K % 256 == 0, x fits workgroup memory and packed 8-bit dot
# products exist (WGSL's packed_4x8_integer_dot_product; Chrome 123+, naga): "q4" picks matvec_q4
# instead for 4-bit weights and the generic matvec for Q8_0 (A/B runs: WEBLLM_MATVEC=q4).
MATVEC_KERNEL = os.environ.get("WEBLLM_MATVEC", "staged")
# bench-only overrides: "WG,LANES,ROWS[,PREFETCH]" for all, then optional ";glu=..." (fused gate/up
# groups), ";tall=..." (N > 65536: LM heads), ";k<K>=..." (rows of exactly K, e.g. k8192=256,32,1)
# and ";wide=..." (K > 8192)
_Q4S_ENV = dict(("all", v) if "=" not in v else v.split("=", 1)
                for v in os.environ.get("WEBLLM_Q4S", "").split(";") if v)


def _env_tiling(key: str) -> StagedTiling | None:
    v = _Q4S_ENV.get(key)
    return StagedTiling(*(int(f) for f in v.split(","))) if v else None


def staged_tiling(K: int, glu: bool = False, N: int = 0, qtype: GGMLType | None = None) -> StagedTiling:
    """The staged kernel's tiling on GPUs for N rows of K (glu: a fused gate/up group): 256 threads as
    32 teams of 8 lanes, one row each, decoded fastest end to end on an H100 (8B Q4_0: 217.7 tok/s;
    16 lanes (16 rows a group) 185.6; 8 lanes x 2 rows (64 rows a group) 207.3; same device call,
    2026-11-24 23:44 UTC). Per op kind (--profile, 23:59 UTC): 16 lanes for K > 8192 (down) and 128
    threads for all ops were no better, except gate/up below. At 1B (2026-11-25 00:18 UTC) more
    workgroups for down (K = 8192: 16 or 32 lanes, 8 or 16 rows a group) were no better either."""
    t = ((_env_tiling("glu") if glu else None) or (_env_tiling("tall") if N > 65536 else None)
         or _env_tiling(f"k{K}") or (_env_tiling("wide") if K > 8192 else None) or _env_tiling("all"))
    if t is None and not glu and K >= 8192 and qtype in (GGMLType.Q8_0, GGMLType.Q6_K):
        # 8- and 6-bit rows of 32+ units (1B down): 16 rows a workgroup, twice the workgroups, 16 lanes
        # splitting each row (H100 kernel_bench --only=staged_q8, 2026-11-25 00:40 UTC, us for N x K
        # 2048 x 8192: Q8_0 40.6 vs 54.8 at 256,8,1 prefetching, Q6_K 59.3 vs 94.3; 4096 x 14336:
        # Q8_0 52.9 vs 51.7, Q6_K 87.4 vs 100.3)
        t = StagedTiling(256, 16, 1)
    if t is None and glu and K >= 4096:
        # fused gate/up of a wide model: twice the workgroups of 16 rows each (8B gate_up 1.55-1.58
        # -> 1.31 ms per token on the H100; at K = 2048 (1B) 0.32-0.33 -> 0.34-0.36: not there)
        t = StagedTiling(128, 8, 1)
    if t is None and K // 256 >= 4 * 8:
        # a lane walks 4 or more units in turn: the next unit's loads go out before this one's math.
        # H100 --profile, 1B w_down (K = 8192) 0.209-0.234 ms per token in 3 runs vs 0.230-0.244 in 6
        # without (2026-11-25 00:18-00:21 UTC): at most a few %, near the run-to-run drift; 8B neutral.
        # Every later measurement (the subgroup reduction) ran with it.
        t = StagedTiling(256, 8, 1, prefetch=True)
    return t or StagedTiling(256, 8, 1)


def _packed_dot(device: Any) -> bool:
    """WGSL's packed_4x8_integer_dot_product (dot4I8Packed): naga always has it; a browser device
    may list its language features as `wgsl_language_features` (navigator.gpu.wgslLanguageFeatures)."""
    features = getattr(device, "wgsl_language_features", None)
    return features is None or "packed_4x8_integer_dot_product" in features


# The smallest subgroup of GPU vendors (PCI ids) whose size wgpu-native does not report (it says 4
# for every adapter, an H100's included): NVIDIA 32, AMD 32 (wave32; GCN 64), Apple 32, Intel 8.
_VENDOR_SUBGROUP_MIN = {0x10DE: 32, 0x1002: 32, 0x106B: 32, 0x8086: 8}


def subgroup_min_size(device: Any) -> int:
    """The adapter's smallest subgroup as far as known: a device's `subgroup_min_size` where the
    backend sets one, else native wgpu's adapter info (wgpu-py 0.32 spells the key
    "stackgroup_min_size") or the vendor's known minimum, whichever is larger; 0 when unknown."""
    size = getattr(device, "subgroup_min_size", None)
    if size:
        return int(size)
    info = getattr(getattr(getattr(device, "raw", None), "adapter", None), "info", None)
    if not hasattr(info, "get"):
        return 0
    said = int(info.get("subgroup_min_size", info.get("stackgroup_min_size", 0)) or 0)
    return max(said, _VENDOR_SUBGROUP_MIN.get(int(info.get("vendor_id", 0) or 0), 0))


def staged_shared_bytes(K: int, tiling: StagedTiling, n_acc: int) -> int:
    """Workgroup memory of matvec_q4s: 17 vec4 of q and 9 vec2 of scales per unit, one f32 per accumulator."""
    return (K // 256) * (17 * 16 + 9 * 8) + 4 * tiling.wg * n_acc


# CPU adapters: 32 lanes per workgroup (4- or 8-wide SIMD), 2 rows per lane (matvec_rows.wgsl.j2).
CPU_TILING = MatvecTiling(wg=32, rows=2, split_k=False)
# SwiftShader (Chrome's CPU adapter) is slower with a uniform x than a storage one (10 vs 1.7 ms
# for a 1536x576 Q4_1 matvec) and wants more rows per lane to reuse x: docs/benchmarks.md.
SWIFTSHADER_TILING = MatvecTiling(wg=32, rows=8, split_k=False)


def _swiftshader(device: Any) -> bool:
    return "swiftshader" in f"{device.info.architecture} {device.info.description}".lower()
MAX_UNIFORM_BINDING = 65536  # WebGPU's default maxUniformBufferBindingSize


@dataclass(frozen=True)
class MatmulRowsTiling:
    """Prefill on CPU adapters (matmul_rows.wgsl.j2): each lane owns rows x tm outputs."""
    wg: int = 8  # lanes per workgroup
    rows: int = 8  # rows per lane: each activation load serves this many rows
    tm: int = 4  # tokens per lane: each weight word serves this many tokens


def gpu_matmul_tiling(n: int) -> MatmulTiling:
    """Prefill tiles on GPUs by the number of rows: big register tiles where a 128-token chunk still
    makes a few hundred workgroups (H100, T = 128: 14336 rows 7.9 TFLOP/s at 64x64/8x8 against 3.8
    at 32x32/4x4; 2048 rows 3.7 at 32x32 against 2.2 at 64x64: docs/benchmarks.md)."""
    if n >= 8192:
        return MatmulTiling(tm=64, tn=64, tk=16, rm=8, rn=8)
    if n >= 4096:
        return MatmulTiling(tm=64, tn=64, tk=32, rm=4, rn=4)
    return MatmulTiling()


def cpu_matmul_tiling(qtype: GGMLType) -> MatmulRowsTiling:
    # Fewer outputs per lane for wide units: a lane keeps rows x (unit words) in registers, and
    # the unrolled shader must compile quickly (SwiftShader: 6 s for rows 16 x tm 4 of Q4_1,
    # 2.8 s for 8 x 4, and 8 x 4 also ran faster there: docs/benchmarks.md).
    if qtype in (GGMLType.Q2_K, GGMLType.Q3_K, GGMLType.Q4_K, GGMLType.Q5_K, GGMLType.Q6_K, GGMLType.IQ4_XS):
        return MatmulRowsTiling(rows=4, tm=2)
    wide = (GGMLType.Q4_0, GGMLType.Q5_0, GGMLType.Q8_0, GGMLType.IQ4_NL, GGMLType.F32)  # units of 2 blocks / 32 bytes
    return MatmulRowsTiling(rows=4 if qtype in wide else 8)


@dataclass(frozen=True)
class MatmulI8Tiling:
    """Prefill through packed 8-bit dot products (matmul_i8.wgsl.j2 after quantize_i8.wgsl.j2): x is
    quantized per 32-block to int8 once per dispatch pair, and each 32-block of a row and a token is
    8 dot4I8Packed. stage: workgroup tiles of tm x tn (GPUs) or barrier-free lanes (CPU adapters)."""
    stage: bool = True
    tm: int = 64  # staged: tokens per workgroup tile (a 128-token chunk: 2 tiles)
    tn: int = 64  # staged: rows per workgroup tile
    rm: int = 4  # tokens per thread: each weight vec4 read serves rm tokens
    rn: int = 4  # rows per thread: each activation vec4 read serves rn rows
    kb: int = 2  # staged: 32-blocks per K step (between barriers), where it divides K / 32
    wg: int = 8  # not staged: lanes per workgroup
    planes: int = 2  # int8 planes of x: 2 adds the rounding residual (16-bit-like x; 1 plane moved
    # SmolLM2's logits ~0.7 from transformers' against 0.008 in f32: docs/benchmarks.md)

    def groups(self, n: int, T: int) -> tuple[int, int]:
        if self.stage:
            return _ceil_div(n, self.tn), _ceil_div(T, self.tm)
        return _ceil_div(n, self.wg * self.rn), _ceil_div(T, self.rm)


I8_TYPES = (GGMLType.Q4_0, GGMLType.Q4_1, GGMLType.Q8_0, GGMLType.Q4_K)
# The prefill policy: "auto" takes matmul_i8 with two int8 planes of x where prefill_i8_tiling's table
# says it pays; "i8x2" (two planes) and "i8" (one: faster, less accurate) force it wherever it can run;
# "f32" keeps the dequantizing matmul / matmul_rows (A/B runs and tests: WEBLLM_PREFILL=..., or set this).
PREFILL_KERNEL = os.environ.get("WEBLLM_PREFILL", "auto")
_I8_ENV = os.environ.get("WEBLLM_I8_TILING", "")


def prefill_i8_tiling(device: Any, qtype: GGMLType, K: int, N: int = 0) -> MatmulI8Tiling | None:
    """The one place that chooses the packed-dot prefill (None: the f32 matmul stays): Q4_0, Q4_1, Q8_0
    and Q4_K weights where WGSL's packed_4x8_integer_dot_product exists; on CPU adapters not Q4_1,
    whose word-aligned blocks matmul_rows already reads well (lavapipe, 128 tokens, ms for 1536x576 /
    576x1536, two planes vs matmul_rows: Q4_0 33.5 / 17.2 vs 38.4 / 35.1, Q8_0 18.9 / 19.7 vs 22.7 /
    22.9, Q4_1 16.6 / 27.5 vs 16.4 / 28.6; Q4_K at 1536x512 / 512x1536 33.6 / 32.8 vs 56.0 / 48.8)."""
    if PREFILL_KERNEL == "f32" or qtype not in I8_TYPES or K % (256 if qtype == GGMLType.Q4_K else 32) or not _packed_dot(device):
        return None
    planes = 1 if PREFILL_KERNEL == "i8" else 2
    if device.info.is_fallback:
        if PREFILL_KERNEL == "auto" and qtype == GGMLType.Q4_1:
            return None
        return MatmulI8Tiling(stage=False, wg=8, rm=4, rn=8, planes=planes)
    kb = 2 if K % 64 == 0 else 1
    if _I8_ENV:  # bench-only override "TM,TN,RM,RN[,KB]": tile sweeps on a GPU without code changes
        tm, tn, rm, rn, *rest = (int(f) for f in _I8_ENV.split(","))
        return MatmulI8Tiling(tm=tm, tn=tn, rm=rm, rn=rn, kb=(rest or [kb])[0] if K % 64 == 0 else 1, planes=planes)
    # 256 threads of 4 tokens x 4 (or 2) rows; narrower tiles for fewer rows, so that a 128-token chunk
    # still makes a few hundred workgroups (as gpu_matmul_tiling). The best of the tilings swept on the
    # H200 (docs/benchmarks.md, packed-dot prefill).
    return MatmulI8Tiling(tm=64, tn=64 if N >= 4096 else 32, rm=4, rn=4 if N >= 4096 else 2, kb=kb, planes=planes)


def _scratch(device: Any, role: str, nbytes: int) -> Any:
    """A device-wide scratch buffer of `nbytes` for `role`, shared by every layer that asks for the
    same size: the dispatches that write and read it are recorded in order."""
    cache = device.__dict__.setdefault("_linear_scratch", {})
    buf = cache.get((role, nbytes))
    if buf is None:
        buf = cache[(role, nbytes)] = device.create_buffer(nbytes, label=f"linear {role}")
    return buf


@dataclass(frozen=True)
class MatmulTiling:
    tm: int = 32  # tokens per tile
    tn: int = 32  # weight rows per tile
    tk: int = 32  # K slab width (multiple of 4)
    rm: int = 4  # tokens per thread
    rn: int = 4  # rows per thread


class Linear:
    """y = x @ W^T (+ bias) with W [N = out, K = in] in any supported ggml type."""

    def __init__(self, device: Any, weight: GPUTensor, bias: GPUTensor | None = None, *,
                 matvec: MatvecTiling | None = None, matmul: MatmulTiling | MatmulRowsTiling | None = None,
                 tokens_at: int = 1, f16: bool = False, subgroups: bool | None = None,
                 out_stride: int | None = None) -> None:
        """subgroups: None uses them where the device has them (requested: NativeDevice(use_subgroups=True));
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
        # CPU adapters (lavapipe, SwiftShader) run workgroup barriers slowly: whole rows per thread
        # there (matvec_rows.wgsl.j2).
        cpu_tiling = SWIFTSHADER_TILING if _swiftshader(device) else CPU_TILING
        # 4-bit and Q8_0 weights on a GPU: the staged kernel (matvec_q4s) where it applies, asked for
        # by a StagedTiling or by default; else, for 4-bit ones, the aligned one (matvec_q4), unless
        # an explicit tiling asks for the one-row-per-thread form (split_k=False).
        aligned = weight.ggml_type in Q4_TYPES and self.K % 64 == 0 and bias is None
        want = matvec if isinstance(matvec, StagedTiling) else staged_tiling(self.K, N=self.N, qtype=weight.ggml_type)
        self.staged = (weight.ggml_type in STAGED_TYPES and bias is None and self.K % 256 == 0 and _packed_dot(device)
                       and (isinstance(matvec, StagedTiling)
                            or (matvec is None and MATVEC_KERNEL == "staged" and not device.info.is_fallback))
                       and staged_shared_bytes(self.K, want, 2 * want.rows + 2)
                       <= device.limits.get("max_compute_workgroup_storage_size", 16384))
        if isinstance(matvec, StagedTiling) and not self.staged:  # asked for, but this weight cannot use it
            matvec = Q4_TILING if aligned else None
        self.matvec_tiling = want if self.staged else (
            matvec or (cpu_tiling if device.info.is_fallback else MatvecTiling()))
        self.q4 = self.staged or (aligned and self.matvec_tiling.split_k)
        if self.q4 and not self.staged and matvec is None:
            self.matvec_tiling = Q4_TILING
        # Prefill: the tiled matmul on GPUs; on CPU adapters, barrier-free rows (matmul_rows.wgsl.j2).
        self.matmul_tiling = matmul or prefill_i8_tiling(device, weight.ggml_type, self.K, self.N) or (
            cpu_matmul_tiling(weight.ggml_type) if device.info.is_fallback else gpu_matmul_tiling(self.N))
        self._params = dict(K=self.K, N=self.N, row_bytes=row_nbytes(weight.ggml_type, self.K),
                            qtype=weight.ggml_type.name, has_bias=bias is not None)
        if out_stride is not None:
            self._params["out_stride"] = out_stride
        self._tokens_at = tokens_at
        self._f16 = bool(f16)
        self._subgroups = device.has_subgroups if subgroups is None else subgroups
        self._subgroups_asked = subgroups is True
        # CPU adapters load a uniform-buffer x once per SIMD batch, a storage x once per lane
        # (~5x faster matvec on lavapipe): where one token's x fits a uniform binding.
        self._x_uniform = (device.info.is_fallback and not self.matvec_tiling.split_k
                           and 4 * self.K <= MAX_UNIFORM_BINDING and not _swiftshader(device))
        # Pipelines are made on first use (accumulate or not) and cached: lavapipe compiles slowly.
        self._kernels: dict[tuple[str, bool], Any] = {}
        # Row blocks (blocks start at multiples of 64 rows: y's and the bias's binding offsets are
        # 256-byte aligned); never fused into a MatvecGroup dispatch.
        self.parts = [(r0, Linear(device, t, None if bias is None else _rows(bias, r0, t.rows), matvec=matvec,
                                  matmul=matmul, tokens_at=tokens_at, f16=f16, subgroups=subgroups, out_stride=self.N))
                      for r0, t in weight.parts]
        if self.parts:
            self.q4 = self.staged = False

    def kernel(self, kind: str, accumulate: bool) -> Any:
        """The 'matvec' or 'matmul' pipeline of this layer."""
        k = self._kernels.get((kind, accumulate))
        if k is None:
            if kind == "matvec" and self.q4:
                k = self.q4_kernel([self.N], accumulate)
            elif kind == "matvec" and not self.matvec_tiling.split_k:
                t = self.matvec_tiling
                k = self.device.kernel("matvec_rows", label=f"matvec_rows {self.weight.name}", wg=t.wg, rows=t.rows,
                                       accumulate=accumulate, x_uniform=self._x_uniform, **self._params)
            elif kind == "matvec":
                t = self.matvec_tiling
                wg = t.wg
                if t.split_k:  # no more threads than the row has units (32-element blocks, or 4 floats)
                    unit = 4 if self.weight.ggml_type in (GGMLType.F32, GGMLType.F16, GGMLType.BF16) else 32
                    wg = min(wg, 1 << max(0, (self.K // unit - 1).bit_length()))
                k = self.device.kernel("matvec", label=f"matvec {self.weight.name}", wg=wg, rows=t.rows, split_k=t.split_k,
                                       accumulate=accumulate, f16=self._f16, subgroups=self._subgroups, **self._params)
            elif kind == "quantize":
                k = self.device.kernel("quantize_i8", label=f"quantize_i8 K {self.K}", K=self.K, wg=64,
                                       planes=self.matmul_tiling.planes, tokens_at=self._tokens_at)
            elif isinstance(self.matmul_tiling, MatmulI8Tiling):
                m = self.matmul_tiling
                k = self.device.kernel("matmul_i8", label=f"matmul_i8 {self.weight.name}", stage=m.stage, tm=m.tm,
                                       tn=m.tn, rm=m.rm, rn=m.rn, kb=m.kb, wg=m.wg, planes=m.planes, qtype=self.weight.ggml_type.name,
                                       K=self.K, row_bytes=self._params["row_bytes"], tokens_at=self._tokens_at,
                                       has_bias=self.bias is not None, accumulate=accumulate,
                                       **{k: v for k, v in self._params.items() if k == "out_stride"})
            elif isinstance(self.matmul_tiling, MatmulRowsTiling):
                m = self.matmul_tiling
                k = self.device.kernel("matmul_rows", label=f"matmul_rows {self.weight.name}", wg=m.wg, rows=m.rows,
                                       tm=m.tm, tokens_at=self._tokens_at, accumulate=accumulate, **self._params)
            else:
                m = self.matmul_tiling
                k = self.device.kernel("matmul", label=f"matmul {self.weight.name}", tm=m.tm, tn=m.tn, tk=m.tk,
                                       rm=m.rm, rn=m.rn, tokens_at=self._tokens_at, accumulate=accumulate,
                                       **self._params)
            self._kernels[(kind, accumulate)] = k
        return k

    def q4_kernel(self, parts: list[int], accumulate: bool, glu: str | None = None, norm: Any = None,
                  tiling: StagedTiling | None = None) -> Any:
        """matvec_q4 (or matvec_q4s) for this layer's type and K over matrices of `parts` rows (see
        MatvecGroup); norm: an ops.RMSNorm applied to x on the way in; tiling: the staged kernel's,
        instead of this layer's."""
        nparams = dict(norm=True, eps=norm.params["eps"], w_offset=norm.params["weight_offset"]) if norm else dict(norm=False)
        t = tiling or self.matvec_tiling
        if self.staged:
            lanes = t.lanes_for(self.K)
            # teams reduce through subgroupShuffleXor where a team surely fits one subgroup. H100, 1B
            # layer ops alternated in one process (kernel_bench --only=staged_sg, us): qkv 11.7 ->
            # 10.7, wo 9.0 -> 8.5, gate_up 18.8 -> 18.4, down 24.9 -> 23.3; 8B ops within +-1 us
            sg = self._subgroups and (self._subgroups_asked or subgroup_min_size(self.device) >= lanes)
            return self.device.kernel("matvec_q4s", label=f"matvec_q4s {self.weight.name}", wg=t.wg,
                                      lanes=lanes, rows=t.rows, prefetch=t.prefetch, subgroups=sg,
                                      qtype=self.weight.ggml_type.name,
                                      K=self.K, parts=list(parts), row_bytes=self._params["row_bytes"],
                                      accumulate=accumulate, glu=glu, **nparams)
        # No more threads than units, but at least one per row: thread r writes row r's result
        # (rows K = 64, 128 would otherwise leave rows unwritten), and two for the tree reduction.
        wg = max(min(t.wg, 1 << max(0, (self.K // 64 - 1).bit_length())), 1 << (max(2, t.rows) - 1).bit_length())
        return self.device.kernel("matvec_q4", label=f"matvec_q4 {self.weight.name}", wg=wg, rows=t.rows,
                                  subgroups=self._subgroups, qtype=self.weight.ggml_type.name,
                                  K=self.K, parts=list(parts), row_bytes=self._params["row_bytes"],
                                  accumulate=accumulate, glu=glu, **nparams)

    def bind(self, x: Any, y: Any, params: Any | None = None, accumulate: bool = False) -> "BoundLinear":
        """Bind groups for fixed buffers x [>=T, K] and y [>=T, N]; `params` is needed for T > 1."""
        if self.parts:
            parts = [lin.bind(x, _from(y, 4 * r0), params, accumulate) for r0, lin in self.parts]
            for p in parts[1:]:  # one x, one K: the blocks share its int8 scratch (_scratch), quantized once
                p.quant = None
            return BoundLinear(self, None, None, accumulate, parts)
        w = self.weight.buffer
        extra = [self.bias.buffer] if self.bias is not None else []
        mv_x = (x, 0, 4 * self.K) if self._x_uniform else x  # a uniform binding holds one token's x
        mv = self.device.bind(self.kernel("matvec", accumulate), [w, mv_x, y, *extra])
        if params is None:
            return BoundLinear(self, mv, None, accumulate)
        if isinstance(self.matmul_tiling, MatmulI8Tiling):
            # x as int8 blocks for as many tokens as x holds: words [T, K / 4], (d, d * sum q) [T, K / 32]
            tokens = x.size // (4 * self.K)
            planes = self.matmul_tiling.planes
            xq, xd = _scratch(self.device, "xq", tokens * self.K * planes), _scratch(self.device, "xd", tokens * self.K // 4)
            quant = self.device.bind(self.kernel("quantize", False), [x, xq, xd, params])
            mm = self.device.bind(self.kernel("matmul", accumulate), [w, xq, xd, y, params, *extra])
            return BoundLinear(self, mv, mm, accumulate, quant=quant)
        mm = self.device.bind(self.kernel("matmul", accumulate), [w, x, y, params, *extra])
        return BoundLinear(self, mv, mm, accumulate)


@dataclass(eq=False)
class BoundLinear:
    linear: Linear
    matvec: Any
    matmul: Any | None = field(default=None)
    accumulate: bool = False
    parts: list["BoundLinear"] = field(default_factory=list)  # one per row block of a split weight
    quant: Any | None = None  # quantize_i8's bind group (matmul_i8 prefill)

    def record(self, rec: Any, n_tokens: int) -> None:
        """Record y = x @ W^T for `n_tokens` rows of x; params[tokens_at] must hold n_tokens when it runs."""
        if self.parts:
            for p in self.parts:
                p.record(rec, n_tokens)
            return
        lin = self.linear
        if n_tokens == 1:
            groups = lin.matvec_tiling.groups(lin.N, lin.K)
            z = _ceil_div(groups, MAX_GROUPS)  # past 65535 groups the grid spills into z
            rec.dispatch(self.matvec, _ceil_div(groups, z), 1, z)
            return
        if self.matmul is None:
            raise ValueError("Linear.bind() was given no params buffer, so it can only record single tokens")
        t = lin.matmul_tiling
        if isinstance(t, MatmulI8Tiling):
            if self.quant is not None:  # None: an earlier row block of this weight quantized x
                rec.dispatch(self.quant, _ceil_div(lin.K // 32, 64), n_tokens)
            rec.dispatch(self.matmul, *t.groups(lin.N, n_tokens))
            return
        if isinstance(t, MatmulRowsTiling):
            rec.dispatch(self.matmul, _ceil_div(lin.N, t.wg * t.rows), _ceil_div(n_tokens, t.tm))
            return
        rec.dispatch(self.matmul, _ceil_div(lin.N, t.tn), _ceil_div(n_tokens, t.tm))


class MatvecGroup:
    """Linears that read the same x, recorded as one dispatch for a single token where the aligned
    4-bit kernel can fuse them (Q/K/V; gate and up with the GLU applied on the way out), and one by
    one otherwise (prefill, other types, biases, CPU adapters).

        MatvecGroup([wq, wk, wv])                      # y_q, y_k, y_v in one dispatch
        MatvecGroup([w_gate, w_up], glu=("silu", op))  # op: the ops.GLU Bound it replaces
        MatvecGroup([wq, wk, wv], norm=attn_norm)      # attn_norm: the ops.RMSNorm Bound writing x

    With `norm`, the fused dispatch reads the norm's input and normalises on the way (the norm's
    own dispatch is then skipped for single tokens: it marks itself `absorbed`); the layer still
    records the norm first, as before, and it runs for prefill. Members of different kernel variants
    (a Q6_K attn_v beside Q4_K q and k) fuse in runs, one dispatch each, every run folding the norm.
    """

    def __init__(self, members: list["BoundLinear"], glu: tuple[str, Any] | None = None, norm: Any = None) -> None:
        self.members, self.glu = members, glu
        lins = [b.linear for b in members]
        first = lins[0]
        bufs = [b.matvec.buffers if b.matvec is not None else () for b in members]  # () for a split weight
        self.runs: list[tuple[Any, int]] = []  # (bind group, workgroups) of each fused dispatch
        # Members fuse in runs of one kernel variant (type, K, tiling): a real Q4_K_M file keeps attn_v
        # in Q6_K in some layers, whose Q/K/V then take two dispatches (q+k, v) instead of three.
        # Gate and up fuse only together (the GLU needs both).
        def variant(l):
            return (l.weight.ggml_type, l.K, l.matvec_tiling, l._subgroups)
        spans: list[list[int]] = []
        for i, l in enumerate(lins):
            if spans and variant(lins[spans[-1][-1]]) == variant(l):
                spans[-1].append(i)
            else:
                spans.append([i])
        ok = (all(l.q4 and not b.accumulate for l, b in zip(lins, members))
              and len({id(bb[1]) for bb in bufs}) == 1 and 1 <= len(lins) <= 3
              and (glu is None or (len(spans) == 1 and len(lins) == 2 and lins[0].N == lins[1].N)))
        # a norm folds in when it is a plain RMSNorm of one row per token writing this x, and every
        # run's kernel can fold it (the norm's own dispatch is then skipped for single tokens)
        rms = getattr(norm, "norm", None)
        nbufs = norm.bind_group.buffers if rms is not None else ()
        fold = (ok and rms is not None and nbufs[2] is bufs[0][1] and rms.params["dim"] == first.K
                and all(lins[sp[0]].K <= FOLD_NORM_MAX_K or lins[sp[0]].staged for sp in spans))
        if ok:
            act, glu_op = glu if glu else (None, None)
            for sp in spans:
                lead = lins[sp[0]]
                parts = [lins[i].N for i in sp]
                outs = [glu_op.bind_group.buffers[2]] if glu else [bufs[i][2] for i in sp]
                t = lead.matvec_tiling
                if (lead.staged and glu  # the default tiling: glu's own instead
                        and t == staged_tiling(lead.K, N=lead.N, qtype=lead.weight.ggml_type)):
                    tg = staged_tiling(lead.K, glu=True)
                    if (staged_shared_bytes(lead.K, tg, 2 * tg.rows + 2)
                            <= lead.device.limits.get("max_compute_workgroup_storage_size", 16384)):
                        t = tg
                k = lead.q4_kernel(parts, False, glu=act, norm=rms if fold else None, tiling=t)
                ins = [nbufs[0], nbufs[1]] if fold else [bufs[0][1]]
                groups = t.groups(parts[0], lead.K) if glu else sum(t.groups(n, lead.K) for n in parts)
                self.runs.append((lead.device.bind(k, [lins[i].weight.buffer for i in sp] + ins + outs), groups))
            if fold:
                norm.absorbed = True

    @property
    def fused(self) -> Any:
        """The first fused dispatch's bind group (None: the members are recorded one by one)."""
        return self.runs[0][0] if self.runs else None

    @property
    def groups(self) -> int:
        return self.runs[0][1]

    def record(self, rec: Any, n_tokens: int) -> None:
        if n_tokens == 1 and self.runs:
            for bind_group, groups in self.runs:
                z = _ceil_div(groups, MAX_GROUPS)
                rec.dispatch(bind_group, _ceil_div(groups, z), 1, z)
            return
        for b in self.members:
            b.record(rec, n_tokens)
        if self.glu:
            self.glu[1].record(rec, n_tokens)


class Embedding:
    """out[t, :] = W[ids[t], :] * scale for a [V, D] table in any supported ggml type."""

    def __init__(self, device: Any, weight: GPUTensor, scale: float = 1.0, wg: int = 64, first_row: int = 0,
                 partial: bool = False) -> None:
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
        self._kernel = device.kernel("embedding", label=f"embedding {weight.name}", D=self.D, V=self.V,
                                     row_bytes=row_nbytes(weight.ggml_type, self.D), qtype=weight.ggml_type.name,
                                     wg=wg, scale=float(scale), first_row=first_row, partial=partial)

    def bind(self, ids: Any, out: Any) -> "BoundEmbedding | BoundParts":
        if self.parts:
            return BoundParts([p.bind(ids, out) for p in self.parts])
        return BoundEmbedding(self, self.device.bind(self._kernel, [self.weight.buffer, ids, out]))


@dataclass(eq=False)
class BoundEmbedding:
    embedding: Embedding
    bind_group: Any

    def record(self, rec: Any, n_tokens: int) -> None:
        e = self.embedding
        rec.dispatch(self.bind_group, _ceil_div(e.D // 4, e.wg), n_tokens)


@dataclass(eq=False)
class BoundParts:
    """The ops over the row blocks of one split matrix (GPUTensor.parts), recorded in turn."""
    parts: list[Any]

    def record(self, rec: Any, n_tokens: int) -> None:
        for p in self.parts:
            p.record(rec, n_tokens)
