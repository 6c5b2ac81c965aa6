"""RMSNorm, RoPE and the gated MLP activation on the native GPU vs numpy written from the papers' formulas."""

import asyncio
import struct

import numpy as np
import pytest

from webllm_py.ops import GLU, Activation, RMSNorm, RoPE

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


def act_reference(act, g):
    g64 = g.astype(np.float64)
    if act == "silu":
        return g64 / (1 + np.exp(-g64))
    return 0.5 * g64 * (1 + np.tanh(np.sqrt(2 / np.pi) * (g64 + 0.044715 * g64**3)))


# (520, 8200): 520 x 8200 / 64 threads = 66,625 workgroups, past WebGPU's 65,535 a dimension (a 512-token
# prefill chunk of Llama-3.2-1B's 8192-wide MLP is 65,536): the grid is capped and the threads stride
@pytest.mark.parametrize("T,n", [(3, 1536), (520, 8200)])
@pytest.mark.parametrize("act", ["silu", "gelu_tanh"])
def test_glu(device, act, T, n):
    rng = np.random.default_rng(4)
    g = rng.standard_normal((T, n), dtype=np.float32) * 4
    u = rng.standard_normal((T, n), dtype=np.float32)
    out = device.create_buffer(T * n * 4)
    op = GLU(device, n, act)
    with device.recorder() as rec:
        op.bind(device.buffer_from(g), device.buffer_from(u), out, step_buffer(device, 0, T)).record(rec, T)
    np.testing.assert_allclose(read(device, out, (T, n)), act_reference(act, g) * u, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("T,n", [(3, 1536), (520, 8200)])
def test_activation(device, T, n):
    rng = np.random.default_rng(5)
    x = rng.standard_normal((T, n), dtype=np.float32) * 4
    out = device.create_buffer(T * n * 4)
    op = Activation(device, n, "gelu_tanh")
    with device.recorder() as rec:
        op.bind(device.buffer_from(x), out, step_buffer(device, 0, T)).record(rec, T)
    np.testing.assert_allclose(read(device, out, (T, n)), act_reference("gelu_tanh", x), rtol=1e-4, atol=1e-5)


def test_unstrided_grid_past_the_limit_is_refused(device):
    """An op whose kernel does not stride refuses a grid WebGPU would reject (a validation error later)."""
    op = RMSNorm(device, device.buffer_from(np.ones(64, np.float32)), 64, 1e-5)
    x = device.create_buffer(64 * 4)
    bound = op.bind(x, x, step_buffer(device, 0, 1))
    with pytest.raises(ValueError, match="workgroups in one dimension"):
        with device.recorder() as rec:
            bound.record(rec, 70000)


def test_rejected_commands_are_a_typed_error_and_the_device_stays_usable(device):
    """A grid WebGPU rejects (70,000 workgroups in x) raises GPUCommandError natively, as the browser
    device does at its next readback (tests/test_dawn.py); the device then runs a kernel again."""
    from webllm_py.errors import GPUCommandError

    k = device.kernel("glu", n=64, act="silu", wg=64)
    bufs = [device.create_buffer(256) for _ in range(3)]
    with pytest.raises(GPUCommandError, match="rejected"):
        with device.recorder() as rec:
            rec.dispatch(device.bind(k, [*bufs, step_buffer(device, 0, 1)]), 70000)
    test_glu(device, "silu", 3, 1536)
    # the same grid in a captured Program: the native replay calls wgpu-native directly, and the error still
    # surfaces when the command buffer is finished
    bad = device.capture(lambda r: r.dispatch(device.bind(k, [*bufs, step_buffer(device, 0, 1)]), 70000))
    with pytest.raises(GPUCommandError, match="rejected"):
        with device.recorder() as rec:
            rec.replay(bad)
    test_glu(device, "silu", 3, 1536)
