"""The subgroup-matrix prefills on Dawn against numpy over gguf-py's dequantize times the f32 activations:
matmul_sgmat.wgsl.j2 (int8 tiles, after quantize_i8.wgsl.j2) within the int8 rounding bound of
test_matmul_i8.py, and matmul_sgmat_f16.wgsl.j2 (f16 tiles) within the f16 rounding bound (f16_bound).

They need Dawn's chromium-experimental-subgroup-matrix, offered only with allow_unsafe_apis and only on GPUs
with such units (the device H200; Mesa 25 lavapipe offers no configs): an i8 16x16x32 config for the first, an
f16 -> f32 16x16x16 config with shader-f16 for the second (on NVIDIA only with the vulkan_enable_f16_on_nvidia
toggle, which the host is started with). Elsewhere those tests skip, saying what the adapter offered. The same
Python as in the browser runs in Pyodide (webllm_py.dawn.DawnHost): Linear, its planner rows
(KernelPolicy(prefill="sgmat"), not the default; matmul_sgmat_f16 is "auto"'s choice where offered:
docs/benchmarks.md), and the kernels.
What lavapipe can check of the f16 kernel, it does: its staging, dequantization, tiling and bounds with the
five subgroup-matrix builtins emulated (tests/sgmat_emulation.py). Both check x's per-token power-of-two scales
(row_scale.wgsl.j2): rows of 1e6 and 1e9, past f16's range, beside ordinary and all-zero ones (outlier_rows),
and one pass over x for Q/K/V and for a weight split into row blocks."""

import asyncio
import base64
import struct
from dataclasses import replace

import numpy as np
import pytest

from webllm_py.dawn import DawnHost, DawnHostError
from webllm_py.formats.quants import GGMLType, TensorInfo
from webllm_py.formats.source import BytesSource
from webllm_py.linear import Linear, MatvecGroup, _scratch
from webllm_py.planner import MatmulSgmatF16Tiling
from webllm_py.weights import split_upload, upload_tensor

from .linear_helpers import f32_buffer, glu_error, glu_group, int8_bound, make_weight, read_f32, run_linear, upload
from .sgmat_emulation import emulating, run_dequant_f16, run_emulated

pytestmark = pytest.mark.dawn

_SETUP = """
import base64, struct
from webllm_py.gpu.browser import BrowserDevice
from webllm_py.formats.quants import GGMLType, TensorInfo
from webllm_py.formats.source import BytesSource
from webllm_py.linear import Linear
from webllm_py.planner import Adapter, KernelPolicy, MatmulSgmatF16Tiling, MatmulSgmatTiling
from webllm_py.weights import upload_tensor
dev = await BrowserDevice.create()
{"features": sorted(dev.features), "configs": sorted(map(list, dev.subgroup_matrix_configs)),
 "subgroup_sizes": list(dev.subgroup_sizes), "sgmat": Adapter.of(dev).subgroup_matrix,
 "sgmat16": Adapter.of(dev).f16_subgroup_matrix}
"""

# Pyodide side: one Linear over the given weight; y starts as NaN (every output must be written).
_RUN = """
def _b(s): return base64.b64decode(s)
N, K, T = {N}, {K}, {T}
raw = _b({raw!r})
w = upload_tensor(dev, BytesSource(raw), TensorInfo("w", (K, N), int(GGMLType[{qtype!r}]), 0, len(raw)))
bias = None
if {bias!r}:
    bb = _b({bias!r})
    bias = upload_tensor(dev, BytesSource(bb), TensorInfo("b", (N,), 0, 0, len(bb)))
lin = Linear(dev, w, bias, matmul={tiling}, policy=KernelPolicy({policy}))
xb = dev.buffer_from(_b({x!r}))
yb = dev.buffer_from(_b({y0!r}))
params = dev.buffer_from(struct.pack("<II", 0, T))
bound = lin.bind(xb, yb, params, accumulate={accumulate})
with dev.recorder() as rec:
    bound.record(rec, T)
[lin.matmul_plan.template, base64.b64encode(await dev.read_buffer(yb, 0, 4 * T * N)).decode()]
"""


def _b64(a) -> str:
    return base64.b64encode(a if isinstance(a, bytes) else np.ascontiguousarray(a).tobytes()).decode()


@pytest.fixture(scope="module")
def dawn():
    """One Dawn host for both kernels: allow_unsafe_apis (the subgroup-matrix feature) and, on NVIDIA,
    vulkan_enable_f16_on_nvidia (shader-f16 and the f16 configs; other GPUs ignore the toggle)."""
    try:
        h = DawnHost(flags=["allow_unsafe_apis", "vulkan_enable_f16_on_nvidia"], timeout=300)
    except DawnHostError as e:  # no Node / Dawn / Vulkan driver here: the dawn marker's other tests fail loudly
        pytest.fail(f"the Dawn host did not start: {e}")
    with h:
        yield h, h.exec(_SETUP)


def _offer(info) -> str:
    return (
        f"features {info['features']}, subgroup matrix configs {info['configs']}, "
        f"subgroup sizes {info['subgroup_sizes']}"
    )


@pytest.fixture(scope="module")
def host(dawn):
    h, info = dawn
    if not info["sgmat"]:
        pytest.skip(f"this adapter has no i8 subgroup matrices ({_offer(info)})")
    return h


@pytest.fixture(scope="module")
def host16(dawn):
    h, info = dawn
    if not info["sgmat16"]:
        pytest.skip(f"this adapter has no f16 -> f32 16x16x16 subgroup matrices with shader-f16 ({_offer(info)})")
    return h


def run(host, qtype, raw, N, K, x, tiling="None", policy='prefill="sgmat"', bias=None, y0=None, accumulate=False):
    T = x.shape[0]
    y0 = np.full((T, N), np.nan, np.float32) if y0 is None else y0.astype(np.float32)
    template, y = host.exec(
        _RUN.format(
            N=N,
            K=K,
            T=T,
            raw=_b64(raw),
            qtype=qtype,
            tiling=tiling,
            policy=policy,
            bias=_b64(bias.astype(np.float32)) if bias is not None else "",
            x=_b64(x.astype(np.float32)),
            y0=_b64(y0),
            accumulate=accumulate,
        )
    )
    return template, np.frombuffer(base64.b64decode(y), np.float32).astype(np.float64).reshape(T, N)


# (N, K, T): K / 32 odd (one block a K step) and even; N and T not multiples of the 64 x 64 tile;
# T = 2, the smallest prefill; a 4096 x 512 weight over a 128-token chunk (many workgroups)
SHAPES = [(37, 96, 5), (130, 256, 70), (33, 64, 2), (4096, 512, 128)]
TILINGS = ["None", "MatmulSgmatTiling(planes=1)", "MatmulSgmatTiling(sg_m=1, sg_n=4, ti=4, tj=1, kb=1)"]
IDS = ["planner", "one-plane", "1x4-subgroups"]


@pytest.mark.parametrize("tiling", TILINGS, ids=IDS)
@pytest.mark.parametrize("qtype", ["Q4_0", "Q8_0"])
def test_matches_numpy(host, qtype, tiling):
    planes = 1 if "planes=1" in tiling else 2
    rng = np.random.default_rng(sum(map(ord, qtype)) + len(tiling))
    for N, K, T in SHAPES:
        raw, w = make_weight(qtype, N, K, rng)
        if "kb=1" not in tiling and tiling != "None" and (K // 32) % 2:
            continue  # kb = 2 needs K / 32 even (the planner drops to kb = 1 itself)
        x = rng.standard_normal((T, K)).astype(np.float32)
        x[0, :32] = 0.0  # an all-zero block: step 0, no division by it
        x[1, 32:64] *= 100.0  # one large block beside ordinary ones
        template, y = run(host, qtype, raw, N, K, x, tiling)
        assert template == "matmul_sgmat"  # the planner's row for this adapter (policy "sgmat"), or the request
        ref = x.astype(np.float64) @ w.T
        scale = np.abs(x.astype(np.float64)) @ np.abs(w).T
        err = np.abs(y - ref)
        bound = int8_bound(x, w, planes)
        assert (err <= bound + 1e-5 * scale).all(), (N, K, T, float((err / (bound + 1e-30)).max()))


def test_bias_accumulate_and_fallback(host):
    """Bias and y += on the tensor-core kernel; the policy's fallback (matmul_i8) on the same adapter agrees."""
    rng = np.random.default_rng(7)
    N, K, T = 45, 128, 9
    raw, w = make_weight("Q4_0", N, K, rng)
    bias = rng.standard_normal(N).astype(np.float32)
    x = rng.standard_normal((T, K)).astype(np.float32)
    y0 = rng.standard_normal((T, N)).astype(np.float32)
    ref = x.astype(np.float64) @ w.T + bias
    tol = int8_bound(x, w, 2) + 1e-5 * (np.abs(x) @ np.abs(w).T + np.abs(bias) + np.abs(y0))
    template, y = run(host, "Q4_0", raw, N, K, x, bias=bias)
    assert template == "matmul_sgmat" and (np.abs(y - ref) <= tol).all()
    template, y = run(host, "Q4_0", raw, N, K, x, bias=bias, y0=y0, accumulate=True)
    assert template == "matmul_sgmat" and (np.abs(y - (ref + y0)) <= tol).all()
    template, y = run(host, "Q4_0", raw, N, K, x, bias=bias, policy='prefill="i8x2"')  # matmul_i8 (faster)
    assert template == "matmul_i8" and (np.abs(y - ref) <= tol).all()


def row_scales(x: np.ndarray) -> np.ndarray:
    """row_scale.wgsl.j2's s_t in numpy: the smallest 2^e, e >= 0, with max_k |x[t, k]| / 2^e <= 2^14."""
    m, e = np.frexp(np.abs(x.astype(np.float64)).max(axis=1) / 2.0**14)  # = m 2^e, m in [0.5, 1) (0: 0, 0)
    return 2.0 ** np.maximum(np.where(m == 0.5, e - 1, e), 0)


def f16_bound(x: np.ndarray, w: np.ndarray, extra: np.ndarray | float = 0.0) -> np.ndarray:
    """What matmul_sgmat_f16 may be off by, per output [T, N]. x_k / s_t (row_scales: exact) and w_k are
    each rounded to f16 once: relative error <= u = 2^-11 (round to nearest), except where x_k / s_t is
    below 2^-14 (f16's subnormals: absolute step 2^-24, so <= 2^-25 s_t). A product is then off by
    <= (2u + u^2) |x_k w_k| + 2^-25 s_t (1 + u) |w_k|: the second term is what a row with outliers
    (s_t > 1) costs its small values, relative to the row's scale. The f32 sums (tensor core and bias/y
    adds) add <= K 2^-24 of the sum of |products| (gamma_K) and 2^-24 of `extra` (|bias| + |y0|)."""
    K = x.shape[1]
    u = 2.0**-11
    scale = np.abs(x.astype(np.float64)) @ np.abs(w).T
    sub = 2.0**-25 * row_scales(x)[:, None] * np.abs(w).sum(axis=1)[None, :]
    return (1 + K * 2.0**-24) * ((2 * u + u * u) * scale + (1 + u) * sub) + 2.0**-24 * np.abs(extra) + 1e-30


def outlier_rows(rng, T: int, K: int) -> np.ndarray:
    """x [T, K] f32 (T >= 10) whose rows f16 alone cannot hold beside ordinary ones: one value of 1e6, one
    of -1e9, a whole row times 1e6, an all-zero row, and rows at row_scale's edges (max 2^14: s = 1; just
    past it and 2^15: s = 2)."""
    x = rng.standard_normal((T, K)).astype(np.float32)
    x[1] = 0.0
    x[2, 5] = 1e6
    x[3, K - 1] = -1e9
    x[4] *= 1e6
    x[6, 0], x[7, 1], x[8, 2] = 16384.0, -16385.0, 32768.0
    x[9, :32] = 0.0  # an all-zero block in an ordinary row
    return x


F16_TILINGS = [
    "None",
    "MatmulSgmatF16Tiling(kb=1, db=True)",
    "MatmulSgmatF16Tiling(sg_m=1, sg_n=4, ti=4, tj=1, kb=1)",
    "MatmulSgmatF16Tiling(sg_n=4, ti=4, kb=1, pf=True)",  # as requested: kb must divide K / 32 = 3
    "MatmulSgmatF16Tiling(sg_n=4, ti=4, kb=1, pf=True, splits=3)",  # split-K, 3 slices (K / 32 = 3 and more)
]
F16_IDS = ["planner", "double-buffer", "1x4-subgroups", "128x128-prefetch", "split-k"]
# Q4_K rows are whole super-blocks of 256
F16_SHAPES = {q: [(37, 256, 5), (70, 512, 33), (4096, 512, 128)] for q in ("Q4_K", "Q6_K")}


@pytest.mark.parametrize("tiling", F16_TILINGS, ids=F16_IDS)
@pytest.mark.parametrize("qtype", ["Q4_0", "Q8_0", "Q4_K", "Q4_1", "Q6_K"])
def test_f16_matches_numpy(host16, qtype, tiling):
    rng = np.random.default_rng(sum(map(ord, qtype)) + len(tiling) + 16)
    for N, K, T in F16_SHAPES.get(qtype, SHAPES):
        raw, w = make_weight(qtype, N, K, rng)
        x = rng.standard_normal((T, K)).astype(np.float32)
        x[0, :32] = 0.0
        x[1, 32:64] *= 100.0
        template, y = run(host16, qtype, raw, N, K, x, tiling, policy='prefill="sgmat-f16"')
        assert template == "matmul_sgmat_f16"
        err = np.abs(y - x.astype(np.float64) @ w.T)
        bound = f16_bound(x, w)
        assert (err <= bound).all(), (N, K, T, float((err / bound).max()))


def test_f16_bias_accumulate_and_fallback(host16):
    """Bias and y += on the f16 kernel (a ragged 45-row, 9-token shape), which "auto" takes where offered;
    the same layer on matmul_i8 agrees."""
    rng = np.random.default_rng(17)
    N, K, T = 45, 128, 9
    raw, w = make_weight("Q4_0", N, K, rng)
    bias = rng.standard_normal(N).astype(np.float32)
    x = rng.standard_normal((T, K)).astype(np.float32)
    y0 = rng.standard_normal((T, N)).astype(np.float32)
    ref = x.astype(np.float64) @ w.T + bias
    policy = 'prefill="sgmat-f16"'
    template, y = run(host16, "Q4_0", raw, N, K, x, policy="", bias=bias)  # "auto"
    assert template == "matmul_sgmat_f16" and (np.abs(y - ref) <= f16_bound(x, w, bias)).all()
    template, y = run(host16, "Q4_0", raw, N, K, x, policy=policy, bias=bias)
    assert template == "matmul_sgmat_f16" and (np.abs(y - ref) <= f16_bound(x, w, bias)).all()
    template, y = run(host16, "Q4_0", raw, N, K, x, policy=policy, bias=bias, y0=y0, accumulate=True)
    bound = f16_bound(x, w, np.abs(bias) + np.abs(y0))
    assert template == "matmul_sgmat_f16" and (np.abs(y - (ref + y0)) <= bound).all()
    template, y = run(host16, "Q4_0", raw, N, K, x, bias=bias, policy='prefill="i8x2"')
    tol = int8_bound(x, w, 2) + 1e-5 * (np.abs(x) @ np.abs(w).T + np.abs(bias))
    assert template == "matmul_i8" and (np.abs(y - ref) <= tol).all()


def _check_scaled(y, x, w, bias=None, y0=None):
    """y finite and within f16_bound of numpy's x @ w.T (+ bias) (+ y0), x with outlier_rows."""
    extra = (np.abs(bias) if bias is not None else 0.0) + (np.abs(y0) if y0 is not None else 0.0)
    ref = x.astype(np.float64) @ w.T + (bias if bias is not None else 0.0) + (y0 if y0 is not None else 0.0)
    bound = f16_bound(x, w, extra)
    assert np.isfinite(y).all()
    assert (np.abs(y - ref) <= bound).all(), float((np.abs(y - ref) / bound).max())


# (qtype, N, K, T, tiling, bias, accumulate): ragged N and T, K / 32 odd, both buffer forms, Q4_K super-blocks
EMULATED = [
    ("Q4_0", 37, 96, 5, MatmulSgmatF16Tiling(kb=1, db=True), True, False),
    ("Q8_0", 130, 256, 70, MatmulSgmatF16Tiling(kb=2, db=False), False, True),
    ("Q4_K", 70, 512, 33, MatmulSgmatF16Tiling(sg_m=1, sg_n=4, ti=2, tj=1, kb=2, db=True), True, True),
    ("Q4_1", 33, 64, 2, MatmulSgmatF16Tiling(), False, False),
    ("Q6_K", 37, 512, 9, MatmulSgmatF16Tiling(kb=2), True, False),
    # prefetch (pf), the planner's two tiles (SGMAT_F16_TILES): 128x128 over 3 steps, 64x64 over 2
    ("Q4_0", 130, 96, 70, MatmulSgmatF16Tiling(sg_n=4, ti=4, kb=1, pf=True), True, True),
    ("Q8_0", 45, 128, 20, MatmulSgmatF16Tiling(pf=True), False, False),
    # 512 threads: the 128x128 tile as 4x4 subgroups of 2x2 tiles (sgmat_bench's "occ" row; sgc's 16 cases), at
    # kb 1, where it fits NVIDIA's 48 KiB of workgroup memory
    ("Q4_0", 130, 128, 70, MatmulSgmatF16Tiling(sg_m=4, sg_n=4, ti=2, tj=2, kb=1, pf=True, sgc=True), True, False),
    # the result slices taken in turns (out_turns): two turns of 4 subgroups, ragged T and N, y +=
    ("Q4_0", 45, 128, 37, MatmulSgmatF16Tiling(sg_m=2, sg_n=4, ti=1, tj=1, pf=True, out_turns=2), False, True),
    # 256 tokens x 128 rows (each weight dequantized half as often as the 128x128 tile's: not yet measured on a
    # GPU; `bench --sgmat-f16-tiling 4,2,4,4,1,0,1,1,1` asks for it), ragged T past its first token tile
    ("Q4_0", 70, 64, 260, MatmulSgmatF16Tiling(sg_m=4, sg_n=2, ti=4, tj=4, kb=1, pf=True, sgc=True), True, False),
]


@pytest.mark.gpu
@pytest.mark.parametrize("case", EMULATED, ids=[f"{c[0]}-{i}" for i, c in enumerate(EMULATED)])
def test_f16_template_emulated(device, case):
    """matmul_sgmat_f16's own WGSL (staging, dequantization, double buffering, tile offsets, bounds, bias,
    y +=) on lavapipe, its five subgroup-matrix calls emulated through workgroup memory, within f16_bound."""
    if not device.has_f16:
        pytest.skip("this adapter has no shader-f16")
    qtype, N, K, T, tiling, bias, accumulate = case
    rng = np.random.default_rng(N + K + T)
    raw, w = make_weight(qtype, N, K, rng)
    x = rng.standard_normal((T, K)).astype(np.float32)
    b = rng.standard_normal(N).astype(np.float32) if bias else None
    y0 = rng.standard_normal((T, N)).astype(np.float32) if accumulate else None
    y = run_emulated(device, qtype, raw, N, K, x, tiling, b, y0)
    extra = (np.abs(b) if bias else 0.0) + (np.abs(y0) if accumulate else 0.0)
    ref = x.astype(np.float64) @ w.T + (b if bias else 0.0) + (y0 if accumulate else 0.0)
    assert (np.abs(y - ref) <= f16_bound(x, w, extra)).all()


# matmul_sgmat_f16's copy-only staging (a measurement: wsrc="f16" W as f16 rows from dequant_f16.wgsl.j2,
# xsrc="f16" x as f16(x / s_t)): (qtype, N, K, T, tiling, wsrc, xsrc f16); ragged N and T, Q4_0 and Q4_K
COPY_ONLY = [
    ("Q4_0", 37, 96, 5, MatmulSgmatF16Tiling(kb=1, db=True), "f16", False),
    ("Q4_K", 45, 512, 20, MatmulSgmatF16Tiling(pf=True), "f16", True),
    ("Q4_0", 37, 128, 9, MatmulSgmatF16Tiling(pf=True), "q", True),
    # the planner's 128x128 tile (SGMAT_F16_TILES), both copies, one K step
    ("Q4_0", 37, 64, 5, MatmulSgmatF16Tiling(sg_n=4, ti=4, pf=True), "f16", True),
]


@pytest.mark.gpu
@pytest.mark.parametrize("case", COPY_ONLY, ids=[f"{c[0]}-w{c[5]}-x{'f16' if c[6] else 'f32'}" for c in COPY_ONLY])
def test_f16_copy_only_emulated(device, case):
    """wsrc="f16" / xsrc="f16" (staging by plain copies; builtins emulated) within f16_bound of numpy over
    gguf-py's dequantization, rows of x past f16's range included (xsrc: row_scale's x16 writes f16(x / s_t))."""
    if not device.has_f16:
        pytest.skip("this adapter has no shader-f16")
    qtype, N, K, T, tiling, wsrc, xf16 = case
    rng = np.random.default_rng(N + K + T + 1)
    raw, w = make_weight(qtype, N, K, rng)
    x = outlier_rows(rng, T, K) if T >= 10 else rng.standard_normal((T, K)).astype(np.float32)
    y = run_emulated(device, qtype, raw, N, K, x, tiling, wsrc=wsrc, xsrc="f16" if xf16 else "f32")
    assert np.isfinite(y).all()
    assert (np.abs(y - x.astype(np.float64) @ w.T) <= f16_bound(x, w)).all()


# 2x2 subgroups of one tile (pf), and 2x1 subgroups of 2x2 tiles (the plain loop; each case's offsets multiply ti
# and tj); the planner's 128x128 tile compiles too slowly on lavapipe with the switch's eight copies
@pytest.mark.parametrize(
    "tiling",
    [MatmulSgmatF16Tiling(ti=1, tj=1, pf=True), MatmulSgmatF16Tiling(sg_n=1, ti=2, tj=2)],
    ids=["sgc-2x2", "sgc-2x1"],
)
@pytest.mark.gpu
def test_f16_same_tiles_emulated(device, tiling):
    """sgc (the multiplies in a switch over the subgroup, every matrix load at a constant offset) stages and
    multiplies the same tiles as the x16 kernel: y bit-equal to the kernel's without it (ragged T and N, several
    K steps, the pf and plain loops), and within f16_bound of numpy."""
    if not device.has_f16:
        pytest.skip("this adapter has no shader-f16")
    N, K, T = 45, 256, 37
    rng = np.random.default_rng(11)
    raw, w = make_weight("Q4_0", N, K, rng)
    x = rng.standard_normal((T, K)).astype(np.float32)
    y = run_emulated(device, "Q4_0", raw, N, K, x, tiling, xsrc="f16")
    y_form = run_emulated(device, "Q4_0", raw, N, K, x, tiling, xsrc="f16", sgc=True)
    assert np.array_equal(y, y_form)
    assert (np.abs(y_form - x.astype(np.float64) @ w.T) <= f16_bound(x, w)).all()


@pytest.mark.gpu
@pytest.mark.parametrize(
    "wg, K",
    # planner.row_scale_wg's two: CPU adapters' 64 and GPUs' 256, each with rows shorter than a workgroup's
    # vec4s and rows that each thread strides over several times
    [(64, 200), (64, 1032), (256, 200), (256, 4104)],
)
def test_row_scale_x16(device, wg, K):
    """row_scale.wgsl.j2's x16 option: s_t as numpy's row_scales and f16(x / s_t) bit-equal numpy's, rows past
    f16's range, all-zero and ordinary ones included."""
    if not device.has_f16:
        pytest.skip("this adapter has no shader-f16")
    T = 12
    x = outlier_rows(np.random.default_rng(3), T, K)
    x[10, 4 * (min(K // 4, wg) - 1)] = 3e5  # a row's max held by the workgroup's last thread with a value
    bufs = [f32_buffer(device, x), device.create_buffer(8 * T), device.buffer_from(struct.pack("<II", 0, T))]
    bufs.append(device.create_buffer(2 * T * K))
    device.run(device.kernel("row_scale", K=K, wg=wg, tokens_at=1, x16=True), bufs, 1, T)
    s = read_f32(device, bufs[1], 2 * T).reshape(T, 2)
    assert (s[:, 0] == row_scales(x)).all() and (s[:, 1] == 1 / row_scales(x)).all()
    got = np.frombuffer(asyncio.run(device.read_buffer(bufs[3], 0, 2 * T * K)), np.uint16).reshape(T, K)
    want = (x.astype(np.float64) / row_scales(x)[:, None]).astype(np.float32).astype(np.float16).view(np.uint16)
    assert (got == want).all(), f"{(got != want).sum()} of {T * K} differ"


@pytest.mark.gpu
@pytest.mark.parametrize("qtype", ["Q4_0", "Q4_K", "Q8_0", "Q4_1", "Q6_K"])
def test_dequant_f16_rows(device, qtype):
    """dequant_f16.wgsl.j2's f16 rows bit-equal numpy's float16 of gguf-py's dequantization (ragged N)."""
    if not device.has_f16:
        pytest.skip("this adapter has no shader-f16")
    N, K = 37, 512
    raw, w = make_weight(qtype, N, K, np.random.default_rng(7))
    out = run_dequant_f16(device, qtype, device.buffer_from(raw + b"\0" * 4), N, K)
    got = np.frombuffer(asyncio.run(device.read_buffer(out, 0, 2 * N * K)), np.uint16).reshape(N, K)
    want = w.astype(np.float32).astype(np.float16).view(np.uint16)
    assert (got == want).all(), f"{(got != want).sum()} of {N * K} differ"


_ADAPTER_FEATURES = """
import js
sorted(str(f) for f in getattr(js.Array, "from")((await js.navigator.gpu.requestAdapter()).features))
"""


def test_dawn_toggles_combine(dawn):
    """Both toggles reach Dawn together (dawn.node keeps only the last of repeated enable-dawn-features
    entries): the adapter with both offers all that allow_unsafe_apis alone adds to the default one."""
    both = set(dawn[0].exec(_ADAPTER_FEATURES))
    with DawnHost(flags=["allow_unsafe_apis"]) as h1, DawnHost() as h0:
        unsafe, default = set(h1.exec(_ADAPTER_FEATURES)), set(h0.exec(_ADAPTER_FEATURES))
    assert unsafe - default, "allow_unsafe_apis offered nothing more here: this test cannot tell"
    assert unsafe - default <= both, unsafe - default - both


def test_unsafe_apis_flag_stays_with_the_host():
    """dawn-bench --unsafe-apis / --subgroup-matrix create Dawn with allow_unsafe_apis; bench's own parser (in
    Pyodide) never sees them (--subgroup-matrix reaches it as --prefill-kernel sgmat)."""
    from webllm_py.dawn import _strip_flags

    argv = [
        "--model",
        "f.gguf",
        "--unsafe-apis",
        "--dawn-flag",
        "allow_unsafe_apis",
        "--subgroup-matrix",
        "--js-heap",
        "512",
        "--js-heap=256",
        "--dawn-flag=disable_robustness",
        "--prompt-tokens",
        "5",
    ]
    assert _strip_flags(argv) == ["--model", "f.gguf", "--prompt-tokens", "5"]


# one subgroup of one 16x16 tile: the emulated kernel compiles fastest on lavapipe (the scales are under test)
SMALL = MatmulSgmatF16Tiling(sg_m=1, sg_n=1, ti=1, tj=1, kb=1)


@pytest.mark.gpu
def test_f16_scaled_rows_emulated(device):
    """x past f16's range (outlier_rows) through a Linear on matmul_sgmat_f16, builtins emulated: row_scale's
    scales are numpy's row_scales exactly; y finite and within f16_bound, with a bias, then y +=. With x16 (the
    planned tiles: row_scale writes f16(x / s_t), the matmul copies it in) y is bit-equal to staging's rounding."""
    if not device.has_f16:
        pytest.skip("this adapter has no shader-f16")
    rng = np.random.default_rng(22)
    N, K, T = 45, 128, 19
    raw, w = make_weight("Q4_0", N, K, rng)
    bias = rng.standard_normal(N).astype(np.float32)
    x = outlier_rows(rng, T, K)
    y0 = rng.standard_normal((T, N)).astype(np.float32)
    ys = []
    for tiling in (SMALL, replace(SMALL, x16=True)):
        with emulating(device):
            b = upload_tensor(device, BytesSource(bias.tobytes()), TensorInfo("b", (N,), 0, 0, 4 * N))
            lin = Linear(device, upload(device, raw, "Q4_0", N, K), b, matmul=tiling)
            assert lin.matmul_plan.template == "matmul_sgmat_f16"
            y = run_linear(device, lin, x)
            scales = read_f32(device, _scratch(device, "xscale", 8 * T), 2 * T).reshape(T, 2)
            y_acc = run_linear(device, lin, x, y0, accumulate=True)
        assert (scales[:, 0] == row_scales(x)).all() and (scales[:, 0] * scales[:, 1] == 1).all(), scales
        _check_scaled(y, x, w, bias)
        _check_scaled(y_acc, x, w, bias, y0)
        ys.append((y, y_acc))
    assert all((a == b).all() for a, b in zip(*ys))


# split-K (splits > 1: partial tiles, then splitk_sum) over ragged N and T: slices even (4 steps in 2),
# uneven (4 in 3; 3 in 2, double-buffered), 8 steps in 4 with the planner's 64x64 prefetching tile
SPLIT_K = [
    ("Q4_0", 45, 128, 19, replace(SMALL, splits=2)),
    ("Q4_0", 45, 128, 19, replace(SMALL, splits=3)),
    ("Q4_0", 37, 96, 5, MatmulSgmatF16Tiling(kb=1, db=True, splits=2)),
    ("Q8_0", 37, 256, 9, replace(SMALL, splits=4)),
    ("Q4_K", 70, 512, 33, MatmulSgmatF16Tiling(kb=1, pf=True, splits=4)),
    ("Q4_0", 45, 128, 19, replace(SMALL, splits=2, x16=True)),  # the slices copy row_scale's f16 x
]


@pytest.mark.gpu
@pytest.mark.parametrize("case", SPLIT_K, ids=[f"{c[0]}-{c[4].splits}-{i}" for i, c in enumerate(SPLIT_K)])
def test_f16_split_k_emulated(device, case):
    """A Linear on split-K matmul_sgmat_f16 (builtins emulated): y within f16_bound of numpy with a bias, then
    y += onto y0, rows of x past f16's range included; two dispatches besides row_scale's."""
    if not device.has_f16:
        pytest.skip("this adapter has no shader-f16")
    qtype, N, K, T, tiling = case
    rng = np.random.default_rng(N + K + T + tiling.splits)
    raw, w = make_weight(qtype, N, K, rng)
    bias = rng.standard_normal(N).astype(np.float32)
    x = outlier_rows(rng, T, K) if T >= 10 else rng.standard_normal((T, K)).astype(np.float32)
    y0 = rng.standard_normal((T, N)).astype(np.float32)
    with emulating(device):
        b = upload_tensor(device, BytesSource(bias.tobytes()), TensorInfo("b", (N,), 0, 0, 4 * N))
        lin = Linear(device, upload(device, raw, qtype, N, K), b, matmul=tiling)
        assert lin.matmul_plan.template == "matmul_sgmat_f16"
        y = run_linear(device, lin, x)
        y_acc = run_linear(device, lin, x, y0, accumulate=True)
        bound = lin.bind(f32_buffer(device, x), f32_buffer(device, y0), device.buffer_from(struct.pack("<II", 0, T)))
        with device.recorder() as rec:
            counting = _Counting(rec)
            bound.record(counting, T)
    assert counting.dispatches == 3 and counting.scales == 1
    _check_scaled(y, x, w, bias)
    _check_scaled(y_acc, x, w, bias, y0)


class _Counting:
    """A recorder passing dispatches on, counting row_scale's."""

    def __init__(self, rec):
        self.rec, self.scales, self.dispatches = rec, 0, 0

    def dispatch(self, bind_group, *groups):
        self.scales += bind_group.kernel.label.startswith("row_scale")
        self.dispatches += 1
        self.rec.dispatch(bind_group, *groups)


# Q/K/V of 64, 32 and 200 rows of Q4_0 at K = 128 (72 bytes a row): a binding limit of 64 rows splits V
# into blocks of 64, 64, 64 and 8 rows
QKV_N, QKV_K, QKV_LIMIT = (64, 32, 200), 128, 64 * 72 + 4


@pytest.mark.gpu
@pytest.mark.parametrize(
    "tiling", [SMALL, replace(SMALL, splits=2), replace(SMALL, x16=True)], ids=["whole-K", "split-K", "x16"]
)
def test_f16_scales_once_per_x_emulated(device, tiling):
    """Q, K and V read one x: a prefill records row_scale once for the group, and once for V alone, whose
    row blocks (a split weight) all read the same scales; every y within f16_bound of numpy (split-K: each
    row block's splitk_sum writes its columns of y, out_stride apart)."""
    if not device.has_f16:
        pytest.skip("this adapter has no shader-f16")
    rng = np.random.default_rng(23)
    T, K = 16, QKV_K
    weights = [make_weight("Q4_0", n, K, rng) for n in QKV_N]
    x = outlier_rows(rng, T, K)
    limit = device.limits["max_storage_buffer_binding_size"]
    device.limits["max_storage_buffer_binding_size"] = QKV_LIMIT  # V splits at upload, as past a real limit
    try:
        tensors = [
            split_upload(device, TensorInfo("w", (K, n), int(GGMLType.Q4_0), 0, len(raw), source=BytesSource(raw)))
            for (raw, _), n in zip(weights, QKV_N)
        ]
    finally:
        device.limits["max_storage_buffer_binding_size"] = limit
    assert [len(t.parts) for t in tensors] == [0, 0, 4]
    with emulating(device):
        xb = f32_buffer(device, x)
        ys = [f32_buffer(device, np.full((T, n), np.nan, np.float32)) for n in QKV_N]
        params = device.buffer_from(struct.pack("<II", 0, T))
        bound = [Linear(device, t, matmul=tiling).bind(xb, y, params) for t, y in zip(tensors, ys)]
        for group in (MatvecGroup(bound), bound[2]):
            with device.recorder() as rec:
                counting = _Counting(rec)
                group.record(counting, T)
            assert counting.scales == 1
    for (_, w), y, n in zip(weights, ys, QKV_N):
        _check_scaled(read_f32(device, y, T * n).reshape(T, n), x, w)


@pytest.mark.parametrize("qtype", ["Q4_0", "Q4_K"])
def test_f16_scaled_rows(host16, qtype):
    """test_f16_scaled_rows_emulated on the tensor cores, as "auto" plans it: rows of 1e6 and 1e9 beside ordinary
    and all-zero ones stay finite and within f16_bound, with a bias, then y +=."""
    rng = np.random.default_rng(24)
    N, K, T = 45, 256, 19
    raw, w = make_weight(qtype, N, K, rng)
    bias = rng.standard_normal(N).astype(np.float32)
    x = outlier_rows(rng, T, K)
    y0 = rng.standard_normal((T, N)).astype(np.float32)
    template, y = run(host16, qtype, raw, N, K, x, policy="", bias=bias)
    assert template == "matmul_sgmat_f16"
    _check_scaled(y, x, w, bias)
    template, y = run(host16, qtype, raw, N, K, x, policy="", bias=bias, y0=y0, accumulate=True)
    _check_scaled(y, x, w, bias, y0)


# Pyodide side of test_f16_scales_once_per_x: Q, K and V over one x, V split into row blocks at upload (the
# binding limit lowered meanwhile), recorded as a group and V alone, counting the passes over x
_QKV = """
from webllm_py.linear import MatvecGroup
from webllm_py.weights import split_upload
T, K, ns = {T}, {K}, {ns}
raws = [base64.b64decode(r) for r in {raws!r}]
limit = dev.limits["max_storage_buffer_binding_size"]
dev.limits["max_storage_buffer_binding_size"] = {limit}
try:
    ts = [split_upload(dev, TensorInfo("w", (K, n), int(GGMLType.Q4_0), 0, len(r), source=BytesSource(r)))
          for r, n in zip(raws, ns)]
finally:
    dev.limits["max_storage_buffer_binding_size"] = limit
xb = dev.buffer_from(base64.b64decode({x!r}))
ys = [dev.buffer_from(struct.pack(f"<{{T * n}}f", *[float("nan")] * (T * n))) for n in ns]
params = dev.buffer_from(struct.pack("<II", 0, T))
lins = [Linear(dev, t, policy=KernelPolicy({policy})) for t in ts]
bound = [lin.bind(xb, y, params) for lin, y in zip(lins, ys)]

class Counting:
    def __init__(self, rec):
        self.rec, self.passes = rec, 0
    def dispatch(self, bind_group, *groups):
        self.passes += bind_group.kernel.label.startswith({pass_label!r})
        self.rec.dispatch(bind_group, *groups)

counts = []
for g in (MatvecGroup(bound), bound[2]):
    with dev.recorder() as rec:
        c = Counting(rec)
        g.record(c, T)
    counts.append(c.passes)
templates = [lin.matmul_plan.template for lin in lins[:2]] + [p.matmul_plan.template for _, p in lins[2].parts]
ys = [base64.b64encode(await dev.read_buffer(y, 0, 4 * T * n)).decode() for y, n in zip(ys, ns)]
[[len(t.parts) for t in ts], counts, templates, ys]
"""


def run_qkv(host, x, raws, policy="", pass_label="row_scale"):
    """[parts per weight, passes over x (group, V alone), templates (Q, K, V's blocks), ys] from _QKV."""
    T, K = x.shape
    src = _QKV.format(
        T=T,
        K=K,
        ns=QKV_N,
        raws=[_b64(r) for r in raws],
        limit=QKV_LIMIT,
        x=_b64(x),
        policy=policy,
        pass_label=pass_label,
    )
    parts, counts, templates, ys = host.exec(src)
    ys = [np.frombuffer(base64.b64decode(y), np.float32).astype(np.float64).reshape(T, n) for y, n in zip(ys, QKV_N)]
    return parts, counts, templates, ys


def test_f16_scales_once_per_x(host16):
    """test_f16_scales_once_per_x_emulated on the tensor cores, as "auto" plans it: one row_scale for Q/K/V and
    one for V's four row blocks; every y within f16_bound of numpy."""
    rng = np.random.default_rng(25)
    weights = [make_weight("Q4_0", n, QKV_K, rng) for n in QKV_N]
    x = outlier_rows(rng, 16, QKV_K)
    parts, counts, templates, ys = run_qkv(host16, x, [raw for raw, _ in weights])
    assert parts == [0, 0, 4] and counts == [1, 1]
    assert templates == ["matmul_sgmat_f16"] * 6
    for (_, w), y in zip(weights, ys):
        _check_scaled(y, x, w)


@pytest.mark.gpu
def test_f16_probes_emulated(device):
    """The template's measurement probes (scripts/sgmat_bench.py --kernels probe) time what their docstring
    says: "mma" multiplies the first K step's tiles at every step (y = STEPS x its partial product), "stage"
    stages every step and multiplies only the last (y = the last step's partial product); both within f16_bound
    of numpy over those K columns. K = 256 with kb 2: four steps."""
    if not device.has_f16:
        pytest.skip("this adapter has no shader-f16")
    N, K, T = 45, 256, 37
    tiling = MatmulSgmatF16Tiling(ti=1, tj=1, pf=True)
    ks, steps = 32 * tiling.kb, K // (32 * tiling.kb)
    rng = np.random.default_rng(12)
    raw, w = make_weight("Q4_0", N, K, rng)
    x = rng.standard_normal((T, K)).astype(np.float32)
    first, last = slice(0, ks), slice(K - ks, K)
    for probe, cols, times in (("mma", first, steps), ("mma-nobarrier", first, steps), ("stage", last, 1)):
        y = run_emulated(device, "Q4_0", raw, N, K, x, tiling, xsrc="f16", sgc=True, probe=probe)
        want = times * (x[:, cols].astype(np.float64) @ w[:, cols].T)
        assert (np.abs(y - want) <= times * f16_bound(x[:, cols], w[:, cols])).all(), probe


def glu_bound(x, wg, wu, act: str):
    """glu_error's bound for matmul_sgmat_f16: each matmul within f16_bound."""
    return glu_error(x, wg, wu, act, f16_bound(x, wg), f16_bound(x, wu))


# The fused gate/up with its GLU epilogue (glu): (qtype, H, K, T, tiling, act, xsrc); ragged H and T, one and
# several K steps, the pf, db and plain loops, the K types, gelu_tanh, x staged from f32 and copied as f16
GLU_EMULATED = [
    ("Q4_0", 37, 96, 5, MatmulSgmatF16Tiling(kb=1, pf=True), "silu", "f16"),
    ("Q4_K", 45, 512, 20, MatmulSgmatF16Tiling(pf=True), "gelu_tanh", "f32"),
    ("Q6_K", 21, 256, 9, MatmulSgmatF16Tiling(kb=2, db=True), "silu", "f32"),
    ("Q8_0", 70, 128, 37, MatmulSgmatF16Tiling(sg_n=1, ti=2, tj=4, kb=2), "silu", "f16"),
]


@pytest.mark.gpu
@pytest.mark.parametrize("case", GLU_EMULATED, ids=[f"{c[0]}-{c[5]}-x{c[6]}" for c in GLU_EMULATED])
def test_f16_glu_emulated(device, case):
    """matmul_sgmat_f16's fused gate/up (glu: both matrices staged in one tile, act(gate) * up in its epilogue)
    within glu_bound of numpy's act(x Wg^T) * (x Wu^T) over gguf-py's dequantization (builtins emulated), rows
    of x past f16's range included; every output written (y starts as NaN)."""
    if not device.has_f16:
        pytest.skip("this adapter has no shader-f16")
    qtype, H, K, T, tiling, act, xsrc = case
    rng = np.random.default_rng(H + K + T + 7)
    raw_g, wg = make_weight(qtype, H, K, rng)
    raw_u, wu = make_weight(qtype, H, K, rng)
    x = outlier_rows(rng, T, K) if T >= 10 else rng.standard_normal((T, K)).astype(np.float32)
    y = run_emulated(device, qtype, raw_g, H, K, x, tiling, up=raw_u, glu=act, xsrc=xsrc)
    bound, ref = glu_bound(x, wg, wu, act)
    assert np.isfinite(y).all()
    assert (np.abs(y - ref) <= bound).all(), float((np.abs(y - ref) / bound).max())


@pytest.mark.gpu
def test_f16_glu_group_emulated():
    """A gate/up MatvecGroup on an adapter with f16 subgroup matrices (builtins emulated) runs the prompt as x's
    row_scale pass and ONE matmul_sgmat_f16 with the GLU in its epilogue, within glu_bound of numpy; with
    KernelPolicy(prefill_glu=False) as row_scale, two matmuls and the GLU pass, within the same bound."""
    from webllm_py.planner import KernelPolicy

    from .model_checks import gpu_like_device
    from .sgmat_emulation import emulated_f16_adapter

    device = gpu_like_device()
    if not device.has_f16:
        pytest.skip("this adapter has no shader-f16")
    H, K, T = 45, 128, 20
    rng = np.random.default_rng(31)
    (raw_g, wg), (raw_u, wu) = make_weight("Q4_0", H, K, rng), make_weight("Q4_0", H, K, rng)
    x = outlier_rows(rng, T, K)
    bound, ref = glu_bound(x, wg, wu, "silu")
    tile = MatmulSgmatF16Tiling(sg_m=1, ti=1, pf=True, x16=True)  # small: the emulated multiplies are slow
    with emulated_f16_adapter(device):
        for on, kernels in (
            (True, ["row_scale", "matmul_sgmat_f16"]),
            (False, ["row_scale", "matmul_sgmat_f16", "matmul_sgmat_f16", "glu"]),
        ):
            y, labels, fused = glu_group(
                device, raw_g, raw_u, H, K, x, KernelPolicy(sgmat_f16_tiling=tile, prefill_glu=on)
            )
            assert fused == on and labels == kernels, (on, labels)
            assert np.isfinite(y).all()
            assert (np.abs(y - ref) <= bound).all(), (on, float((np.abs(y - ref) / bound).max()))


_GLU = """
import base64, struct
from webllm_py.linear import Linear, MatvecGroup
from webllm_py.ops import GLU
T, K, H = {T}, {K}, {H}
ws = [upload_tensor(dev, BytesSource(base64.b64decode(r)), TensorInfo("w", (K, H), int(GGMLType.{qtype}), 0, len(base64.b64decode(r)))) for r in {raws!r}]
xb = dev.buffer_from(base64.b64decode({x!r}))
ys = [dev.buffer_from(struct.pack(f"<{{T * H}}f", *[float("nan")] * (T * H))) for _ in range(3)]
params = dev.buffer_from(struct.pack("<II", 0, T))
gate, up = (Linear(dev, w, policy=KernelPolicy({policy})).bind(xb, y, params) for w, y in zip(ws, ys))
group = MatvecGroup([gate, up], glu=({act!r}, GLU(dev, H, {act!r}).bind(ys[0], ys[1], ys[2], params)))
with dev.recorder() as rec:
    group.record(rec, T)
[group.prefill_group is not None, base64.b64encode(await dev.read_buffer(ys[2], 0, 4 * T * H)).decode()]
"""


@pytest.mark.parametrize("qtype,act", [("Q4_0", "silu"), ("Q4_K", "gelu_tanh")])
@pytest.mark.parametrize("policy", ["prefill_glu=True", "prefill_glu=False"], ids=["fused", "two-matmuls"])
def test_f16_glu(host16, qtype, act, policy):
    """The prompt's gate/up on the tensor cores as "auto" plans it: with KernelPolicy(prefill_glu=True) (the
    default) one matmul_sgmat_f16 with the GLU in its epilogue (the planner's tile for 2 H rows), with
    prefill_glu=False two matmuls and the GLU pass; ragged H and T, rows of x past f16's range: within glu_bound of numpy over gguf-py's dequantization."""
    H, K, T = 300, 512, 70
    rng = np.random.default_rng(41)
    (raw_g, wg), (raw_u, wu) = make_weight(qtype, H, K, rng), make_weight(qtype, H, K, rng)
    x = outlier_rows(rng, T, K)
    fused, y = host16.exec(
        _GLU.format(T=T, K=K, H=H, qtype=qtype, raws=[_b64(raw_g), _b64(raw_u)], x=_b64(x), policy=policy, act=act)
    )
    y = np.frombuffer(base64.b64decode(y), np.float32).astype(np.float64).reshape(T, H)
    assert fused == policy.endswith("True")
    bound, ref = glu_bound(x, wg, wu, act)
    assert np.isfinite(y).all()
    assert (np.abs(y - ref) <= bound).all(), float((np.abs(y - ref) / bound).max())


# Q/K/V as one dispatch (mats): (qtype, rows of each matrix, K, T, tiling); ragged rows and T, two and three
# matrices, one and several K steps
MATS_EMULATED = [
    ("Q4_0", (70, 21, 21), 96, 20, MatmulSgmatF16Tiling(kb=1, pf=True, x16=True)),
    ("Q4_K", (45, 33), 512, 12, MatmulSgmatF16Tiling(pf=True)),
]


@pytest.mark.gpu
@pytest.mark.parametrize("case", MATS_EMULATED, ids=[f"{c[0]}-{len(c[1])}" for c in MATS_EMULATED])
def test_f16_mats_emulated(device, case):
    """matmul_sgmat_f16 over two or three matrices in one dispatch (mats: each workgroup on one matrix's rows, in
    turn): every y within f16_bound of numpy over gguf-py's dequantization, every output written (y starts as
    NaN), rows of x past f16's range included (builtins emulated)."""
    if not device.has_f16:
        pytest.skip("this adapter has no shader-f16")
    qtype, rows, K, T, tiling = case
    rng = np.random.default_rng(sum(rows) + K + T)
    weights = [make_weight(qtype, n, K, rng) for n in rows]
    x = outlier_rows(rng, T, K)
    ys = run_emulated(
        device,
        qtype,
        weights[0][0],
        rows[0],
        K,
        x,
        tiling,
        xsrc="f16" if tiling.x16 else "f32",
        others=[(raw, n) for (raw, _), n in zip(weights[1:], rows[1:])],
    )
    for (_, w), y in zip(weights, ys):
        assert np.isfinite(y).all()
        assert (np.abs(y - x.astype(np.float64) @ w.T) <= f16_bound(x, w)).all()
