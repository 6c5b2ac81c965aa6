"""RMSNorm, RoPE and the gated MLP activation on the native GPU vs numpy written from the papers' formulas."""

import asyncio
import struct

import numpy as np
import pytest

from webllm_py.ops import GLU, RMSNorm, RoPE

from .attention_helpers import rope_reference

pytestmark = pytest.mark.gpu


def read(device, buf, shape):
    return np.frombuffer(asyncio.run(device.read_buffer(buf)), np.float32)[: int(np.prod(shape))].reshape(shape)


def step_buffer(device, pos0, n):
    return device.buffer_from(struct.pack("<2I", pos0, n))


@pytest.mark.parametrize("last_only,offset", [(False, 0.0), (True, 0.0), (False, 1.0)])
def test_rmsnorm(device, last_only, offset):
    rng = np.random.default_rng(2)
    T, D, eps = 5, 576, 1e-5
    x = rng.standard_normal((T, D), dtype=np.float32) * 3
    w = rng.standard_normal(D, dtype=np.float32)
    y = device.create_buffer(T * D * 4)
    op = RMSNorm(device, device.buffer_from(w), D, eps, weight_offset=offset)
    with device.recorder() as rec:
        op.bind(device.buffer_from(x), y, step_buffer(device, 0, T), last_only=last_only).record(rec, T)
    x64 = x.astype(np.float64)
    ref = x64 / np.sqrt((x64**2).mean(-1, keepdims=True) + eps) * (w + offset)
    if last_only:
        np.testing.assert_allclose(read(device, y, (1, D))[0], ref[-1], rtol=1e-5, atol=1e-5)
    else:
        np.testing.assert_allclose(read(device, y, (T, D)), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("pairs,rot_dim", [("adjacent", 64), ("halves", 64), ("halves", 32)])
def test_rope(device, pairs, rot_dim):
    rng = np.random.default_rng(3)
    T, nh, nkv, hd, pos0 = 4, 9, 3, 64, 37
    inv_freq = [1.0 / 10000 ** (2 * i / rot_dim) for i in range(rot_dim // 2)]
    q = rng.standard_normal((T, nh, hd), dtype=np.float32)
    k = rng.standard_normal((T, nkv, hd), dtype=np.float32)
    bq, bk = device.buffer_from(q), device.buffer_from(k)
    op = RoPE(device, inv_freq, nh, nkv, hd, pairs)
    with device.recorder() as rec:
        op.bind(bq, bk, step_buffer(device, pos0, T)).record(rec, T)
    pos = list(range(pos0, pos0 + T))
    np.testing.assert_allclose(read(device, bq, q.shape), rope_reference(q, pos, inv_freq, pairs), atol=2e-4)
    np.testing.assert_allclose(read(device, bk, k.shape), rope_reference(k, pos, inv_freq, pairs), atol=2e-4)


@pytest.mark.parametrize("act", ["silu", "gelu_tanh"])
def test_glu(device, act):
    rng = np.random.default_rng(4)
    T, n = 3, 1536
    g = rng.standard_normal((T, n), dtype=np.float32) * 4
    u = rng.standard_normal((T, n), dtype=np.float32)
    out = device.create_buffer(T * n * 4)
    op = GLU(device, n, act)
    with device.recorder() as rec:
        op.bind(device.buffer_from(g), device.buffer_from(u), out, step_buffer(device, 0, T)).record(rec, T)
    g64 = g.astype(np.float64)
    if act == "silu":
        a = g64 / (1 + np.exp(-g64))
    else:
        a = 0.5 * g64 * (1 + np.tanh(np.sqrt(2 / np.pi) * (g64 + 0.044715 * g64**3)))
    np.testing.assert_allclose(read(device, out, (T, n)), a * u, rtol=1e-4, atol=1e-5)
