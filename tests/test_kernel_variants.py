"""Kernel variants real GPUs get by default but CPU adapters (lavapipe, CI) do not: RMSNorm with
many threads per row (vec4 and scalar rows) vs numpy from the formula."""
import asyncio
import struct

import numpy as np
import pytest

from webllm_py.ops import RMSNorm


@pytest.mark.parametrize("D,wg", [(2048, 256), (578, 128)])  # vec4 rows; a row length not a multiple of 4
def test_rmsnorm_wide_workgroups(device, D, wg):
    rng = np.random.default_rng(3)
    T, eps = 3, 1e-6
    x = rng.standard_normal((T, D), dtype=np.float32) * 2
    w = rng.standard_normal(D, dtype=np.float32)
    y = device.create_buffer(T * D * 4)
    op = RMSNorm(device, device.buffer_from(w), D, eps, wg=wg)
    with device.recorder() as rec:
        op.bind(device.buffer_from(x), y, device.buffer_from(struct.pack("<2I", 0, T))).record(rec, T)
    got = np.frombuffer(asyncio.run(device.read_buffer(y)), np.float32).reshape(T, D)
    x64 = x.astype(np.float64)
    ref = x64 / np.sqrt((x64 ** 2).mean(-1, keepdims=True) + eps) * w
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("f16", [False, True])
def test_decode_attention_gpu_form(device, f16):
    """Decode attention as GPUs run it (32-position chunks looped in full, many slices) vs numpy:
    partial last chunks, empty slices, GQA, f16 and f32 caches."""
    from .test_attention import H, KV, Harness, make_qkv, reference, shuffled_cache
    N = 75
    q, k, v = make_qkv(N, 11)
    h = Harness(device, shuffled_cache(device, num_blocks=40, block_size=4, dtype="f16" if f16 else "f32"),
                max_tokens=64, decode_wg=32, decode_splits=8, decode_full_chunks=True)
    got = h.run(0, q, k, v, [40] + [1] * 35)
    np.testing.assert_allclose(got, reference(q, k, v, H, KV), atol=1e-3 if f16 else 2e-5, rtol=1e-3 if f16 else 1e-4)  # f16: K/V rounded
