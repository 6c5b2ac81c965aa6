"""Weights and buffers for the kernel tests (test_linear*.py, test_matvec_q4.py, test_matmul_i8.py,
test_embedding.py, test_moe.py, test_row_split.py ...): random ggml matrices and their float64
dequantization by gguf-py (the independent reference), uploads, f32 buffers, and the error measures."""

import asyncio
import struct

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")

from webllm_py.formats.quants import GGMLType, TensorInfo  # noqa: E402
from webllm_py.formats.source import BytesSource  # noqa: E402
from webllm_py.linear import Linear  # noqa: E402
from webllm_py.planner import KernelPolicy  # noqa: E402
from webllm_py.weights import upload_tensor  # noqa: E402

from .gguf_models import F16_FIELDS  # noqa: E402

TYPES = [
    "F32",
    "F16",
    "BF16",
    "Q4_0",
    "Q4_1",
    "Q5_0",
    "Q5_1",
    "Q8_0",
    "Q2_K",
    "Q3_K",
    "Q4_K",
    "Q5_K",
    "Q6_K",
    "IQ4_NL",
    "IQ4_XS",
]


# This file checks the f32 kernels to ~1e-6; the int8 prefill (planner.i8_tiling, which Linear picks by
# default for Q4_0 / Q8_0 / Q4_K, and on GPUs Q4_1) has its own bound in test_matmul_i8.py.
F32 = KernelPolicy(prefill="f32")


def make_weight(name: str, n: int, k: int, rng) -> tuple[bytes, np.ndarray]:
    """(raw ggml bytes of an [n, k] matrix, its float64 dequantization by gguf-py)."""
    qt = gguf.GGMLQuantizationType[name]
    if name in F16_FIELDS:
        bs, ts = gguf.GGML_QUANT_SIZES[qt]
        raw = rng.integers(0, 256, (n, k // bs, ts), dtype=np.uint8)
        for p in F16_FIELDS[name]:
            raw[:, :, p : p + 2] = rng.uniform(0.001, 0.05, (n, k // bs, 1)).astype(np.float16).view(np.uint8)
        raw = raw.reshape(n, -1)
    elif name == "F32":
        raw = rng.standard_normal((n, k)).astype(np.float32)
    elif name == "F16":
        raw = rng.standard_normal((n, k)).astype(np.float16)
    else:
        raw = gguf.quants.quantize(rng.standard_normal((n, k)).astype(np.float32), qt)
    deq = gguf.quants.dequantize(raw, qt).astype(np.float64).reshape(n, k)
    return raw.tobytes(), deq


def upload(device, raw: bytes, name: str, n: int, k: int):
    info = TensorInfo("w", (k, n), int(GGMLType[name]), 0, len(raw))
    return upload_tensor(device, BytesSource(raw), info)


def f32_buffer(device, a: np.ndarray):
    return device.buffer_from(np.ascontiguousarray(a, np.float32).tobytes())


def read_f32(device, buf, count: int) -> np.ndarray:
    return np.frombuffer(asyncio.run(device.read_buffer(buf, 0, count * 4)), np.float32).astype(np.float64)


def assert_close(y, ref, x, w):
    # f32 accumulation in a different order: error bounded relative to sum |x||w| per output.
    scale = np.abs(x.astype(np.float64)) @ np.abs(w).T + 1e-30
    err = np.abs(y - ref) / scale
    assert err.max() < 2e-6, f"max scaled error {err.max():.3g}"


def run_linear(device, lin: Linear, x: np.ndarray, y0: np.ndarray | None = None, accumulate=False) -> np.ndarray:
    T = x.shape[0]
    xb = f32_buffer(device, x)
    yb = f32_buffer(device, y0 if y0 is not None else np.full((T, lin.N), np.nan, np.float32))
    params = device.buffer_from(struct.pack("<II", 0, T))
    bound = lin.bind(xb, yb, params, accumulate=accumulate)
    with device.recorder() as rec:
        bound.record(rec, T)
    return read_f32(device, yb, T * lin.N).reshape(T, lin.N)


def scaled_error(y, x, w):
    ref = x.astype(np.float64) @ w.T
    return (np.abs(y - ref) / (np.abs(x.astype(np.float64)) @ np.abs(w).T + 1e-30)).max()


def q8_blocks(x: np.ndarray, planes: int = 1) -> np.ndarray:
    """x rounded as the staged kernel stages it (llama.cpp's q8_1 rule, in f32): per 32 elements
    d = max|x| / 127, q = round(x * (1 / d)) (half to even, as WGSL's round); returns q * d. planes=2
    adds the residual plane r = round((x - q d) * (254 / d)), clamped to +-127: q * d + r * d / 254."""
    b = np.asarray(x, np.float32).reshape(-1, 32)
    d = (np.abs(b).max(axis=1, keepdims=True) / np.float32(127)).astype(np.float32)
    inv = np.where(d > 0, np.float32(1) / np.where(d > 0, d, 1), 0).astype(np.float32)
    q = np.round(b * inv)
    out = q * d.astype(np.float64)
    if planes == 2:
        r = np.clip(np.round((b - q * d) * (np.float32(254) * inv)), -127, 127)
        out += r * (d.astype(np.float64) / 254)
    return out.reshape(x.shape)


def staged_weight(qtype: str, n: int, k: int, rng) -> tuple[bytes, np.ndarray]:
    """make_weight, except Q8_0 as random bytes with small f16 scales (every int8 value, -128
    included, which gguf-py's quantizer never writes), dequantized by gguf-py."""
    if qtype != "Q8_0":
        return make_weight(qtype, n, k, rng)
    raw = rng.integers(0, 256, (n, k // 32, 34), dtype=np.uint8)
    raw[:, :, 0:2] = rng.uniform(0.001, 0.05, (n, k // 32, 1)).astype(np.float16).view(np.uint8)
    raw = raw.reshape(n, -1)
    deq = gguf.quants.dequantize(raw, gguf.GGMLQuantizationType.Q8_0).astype(np.float64).reshape(n, k)
    return raw.tobytes(), deq


def staged_error(y, x, w, planes: int = 1):
    """Max error against W @ q8(x), scaled by sum |q8(x)| |w| per output (f32 accumulation order)."""
    xq = q8_blocks(x, planes)
    return (np.abs(y - xq @ w.T) / (np.abs(xq) @ np.abs(w).T + 1e-30)).max()


def int8_bound(x: np.ndarray, w: np.ndarray, planes: int = 1) -> np.ndarray:
    """sum_k |w_k| * (half a step of x's block) for every output [T, N]: the step is max|x_block| / 127
    with one int8 plane, 254 times finer with the residual plane."""
    T, K = x.shape
    half_step = np.abs(x.astype(np.float64)).reshape(T, K // 32, 32).max(2) / 127 / 2 / (254 if planes == 2 else 1)
    return np.repeat(half_step, 32, 1) @ np.abs(w).T


def _silu(v):
    with np.errstate(over="ignore"):  # exp(-v) of a very negative v: inf, and silu(v) -0, as in f32
        return v / (1.0 + np.exp(-v))


def _gelu_tanh(v):
    return 0.5 * v * (1.0 + np.tanh(0.7978845608028654 * (v + 0.044715 * v**3)))


def glu_error(x, wg, wu, act: str, ea, eb):
    """(bound, reference) for a fused gate/up's act(x Wg^T) * (x Wu^T) where its gate sums a are within ea and its
    up sums b within eb of numpy's: |act(a) b - act(a') b'| <= 1.13 ea (|b| + eb) + |act(a)| eb (the activations'
    slopes are at most 1.1 (silu) and 1.13 (gelu_tanh) in magnitude), plus f32's rounding."""
    a, b = x.astype(np.float64) @ wg.T, x.astype(np.float64) @ wu.T
    fa = _silu(a) if act == "silu" else _gelu_tanh(a)
    return 1.13 * ea * (np.abs(b) + eb) + np.abs(fa) * eb + 1e-5 * np.abs(fa * b) + 1e-6, fa * b


def glu_group(device, raw_g, raw_u, H, K, x, policy, act="silu", qtype="Q4_0"):
    """A fused gate/up MatvecGroup (glu) over raw rows, recorded for x's T tokens: (its GLU output [T, H], the
    kernels it dispatched (first word of each label), whether the group planned the one-matmul form)."""
    from webllm_py.linear import MatvecGroup
    from webllm_py.ops import GLU

    T = x.shape[0]
    xb = f32_buffer(device, x)
    ys = [f32_buffer(device, np.full((T, H), np.nan, np.float32)) for _ in range(3)]
    params = device.buffer_from(struct.pack("<II", 0, T))
    gate, up = (
        Linear(device, upload(device, r, qtype, H, K), policy=policy).bind(xb, y, params)
        for r, y in zip((raw_g, raw_u), ys)
    )
    group = MatvecGroup([gate, up], glu=(act, GLU(device, H, act).bind(ys[0], ys[1], ys[2], params)))
    with device.recorder() as rec:
        labels = Labels(rec)
        group.record(labels, T)
    return read_f32(device, ys[2], T * H).reshape(T, H), labels.kernels, group.prefill_group is not None


class Labels:
    """A recorder passing dispatches on to `rec` that keeps each one's kernel (its label's first word)."""

    def __init__(self, rec):
        self.rec, self.kernels = rec, []

    def dispatch(self, bind_group, *groups):
        self.kernels.append(bind_group.kernel.label.split()[0])
        self.rec.dispatch(bind_group, *groups)
