"""The CPU-adapter kernels (matvec_rows / matmul_rows.wgsl.j2, what lavapipe and SwiftShader run)
vs numpy over gguf-py's dequantize, for every ggml type: word-aligned rows and rows that are not
(an odd number of 18/22/34-byte blocks, Q6_K's 210-byte blocks), several rows/tokens per lane,
partial tiles (odd N, T not a multiple of tm), bias with accumulate (the plain store is the
default Linear's)."""

import numpy as np
import pytest

pytest.importorskip("gguf")

from tests.linear_helpers import F32, TYPES, assert_close, make_weight, run_linear, upload
from webllm_py.formats.quants import GGMLType, TensorInfo
from webllm_py.formats.source import BytesSource
from webllm_py.linear import Linear, MatmulRowsTiling, MatvecTiling
from webllm_py.planner import cpu_matmul_tiling
from webllm_py.weights import upload_tensor


def shapes(qtype):
    # K-quant kernels take seconds each to JIT on lavapipe: one shape (Q6_K rows are never word-aligned)
    if qtype == "Q4_K":
        return [(37, 512)]
    if qtype in ("Q2_K", "Q3_K", "Q5_K", "Q6_K", "IQ4_XS"):
        return [(21, 256)]
    return [(37, 128), (21, 96)]  # 4 blocks (paired units); 3 (Q4_0/Q5_0/Q8_0 rows unaligned)


@pytest.mark.parametrize("qtype", TYPES)
def test_rows_kernels_every_type(device, qtype):
    if not device.info.is_fallback:
        pytest.skip("CPU-adapter kernels are chosen on fallback adapters (CI: lavapipe)")
    rng = np.random.default_rng(sum(map(ord, qtype)))
    for N, K in shapes(qtype):
        raw, w = make_weight(qtype, N, K, rng)
        bias = rng.standard_normal(N).astype(np.float32)
        bias_t = upload_tensor(device, BytesSource(bias.tobytes()), TensorInfo("b", (N,), 0, 0, N * 4))
        weight = upload(device, raw, qtype, N, K)
        default = Linear(device, weight, policy=F32)  # the f32 kernels (int8 prefill: test_matmul_i8.py)
        assert default.kernel("matvec", False).label.startswith("matvec_rows")
        assert default.kernel("matmul", False).label.startswith("matmul_rows")
        for T in (1, 7):
            x = rng.standard_normal((T, K)).astype(np.float32)
            assert_close(run_linear(device, default, x), x.astype(np.float64) @ w.T, x, w)
        # other tilings, with bias and residual add
        big = qtype in (
            "Q2_K",
            "Q3_K",
            "Q4_K",
            "Q5_K",
            "Q6_K",
            "IQ4_XS",
        )  # 256-element units: small tiles keep compiles quick
        lin = Linear(
            device,
            weight,
            bias_t,
            matvec=MatvecTiling(wg=4, rows=2 if big else 3, split_k=False),
            matmul=MatmulRowsTiling(wg=4, rows=2 if big else 3, tm=3 if big else 5),
        )
        for T in (1, 12):
            x = rng.standard_normal((T, K)).astype(np.float32)
            y0 = rng.standard_normal((T, N)).astype(np.float32)
            ref = x.astype(np.float64) @ w.T + bias
            assert_close(run_linear(device, lin, x, y0, accumulate=True), ref + y0, x, w)


# SwiftShader's matvec_rows and matmul_rows (planner: shape_at_run_time): K, row bytes and accumulate from a
# binding, one pipeline for every K of a unit layout. Word-aligned and unaligned rows, a K-quant and a float type.
# "Q4_1 dequant": SwiftShader's Q4_1 prefill (planner.SWIFTSHADER_MATMUL_TABLE), units unpacked once per row;
# "row_loop": the lane's rows walked by a loop (5 rows a lane: the second workgroup of N = 21 has one row);
# "... swiftshader": the planner's row as it ships (one workgroup of 4 x 48 rows, 5-10 of them in use).
@pytest.mark.parametrize(
    "case",
    [
        "Q4_1",
        "Q4_1 dequant",
        "Q4_1 dequant row_loop",
        "Q4_1 swiftshader",
        "Q4_0",
        "Q4_0 row_loop",
        "Q8_0",
        "Q8_0 swiftshader",
        "Q6_K",
        "F16",
    ],
)
def test_matmul_rows_shape_at_run_time(device, case):
    if not device.info.is_fallback:
        pytest.skip("CPU-adapter kernels are chosen on fallback adapters (CI: lavapipe)")
    qtype, dequant, row_loop = case.split()[0], "dequant" in case, "row_loop" in case
    rng = np.random.default_rng(7 + sum(map(ord, qtype)) + dequant + 2 * row_loop)
    unit = 256 if qtype == "Q6_K" else 32
    tiling = MatmulRowsTiling(
        wg=4, rows=5 if row_loop else 2, tm=3, shape_at_run_time=True, dequant=dequant, row_loop=row_loop
    )
    if "swiftshader" in case:
        tiling = cpu_matmul_tiling(GGMLType[qtype], swiftshader=True)
    mv_tiling = MatvecTiling(wg=4, rows=3, split_k=False, shape_at_run_time=True)
    # (N, K): two of one layout (an even number of blocks), one of another (odd: unaligned Q4_0/Q8_0/Q6_K
    # rows) with a bias
    lins, ws = [], []
    for N, K in ((37, 4 * unit), (21, 6 * unit), (19, 3 * unit)):
        raw, w = make_weight(qtype, N, K, rng)
        bias = rng.standard_normal(N).astype(np.float32) if N == 19 else None
        bias_t = None
        if bias is not None:
            bias_t = upload_tensor(device, BytesSource(bias.tobytes()), TensorInfo("b", (N,), 0, 0, N * 4))
        lins.append(Linear(device, upload(device, raw, qtype, N, K), bias_t, matvec=mv_tiling, matmul=tiling))
        ws.append((w, bias))
    for kind in ("matvec", "matmul"):  # one pipeline for both K and accumulate
        assert lins[0].kernel(kind, False) is lins[1].kernel(kind, False) is lins[1].kernel(kind, True)
    for lin, (w, bias) in zip(lins, ws):
        for T, acc in ((1, False), (1, True), (7, False), (12, True)):
            x = rng.standard_normal((T, lin.K)).astype(np.float32)
            y0 = rng.standard_normal((T, lin.N)).astype(np.float32)
            ref = x.astype(np.float64) @ w.T + (0 if bias is None else bias) + (y0 if acc else 0)
            assert_close(run_linear(device, lin, x, y0, accumulate=acc), ref, x, w)
