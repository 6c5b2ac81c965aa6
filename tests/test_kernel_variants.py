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
    ref = x64 / np.sqrt((x64**2).mean(-1, keepdims=True) + eps) * w
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("f16", [False, True])
def test_decode_attention_gpu_form(device, f16):
    """Decode attention as GPUs run it (32-position chunks looped in full, many slices) vs numpy:
    partial last chunks, empty slices, GQA, f16 and f32 caches."""
    from .attention_helpers import H, KV, Harness, make_qkv, reference, shuffled_cache

    N = 75
    q, k, v = make_qkv(N, 11)
    h = Harness(
        device,
        shuffled_cache(device, num_blocks=40, block_size=4, dtype="f16" if f16 else "f32"),
        max_tokens=64,
        decode_wg=32,
        decode_splits=8,
        decode_full_chunks=True,
        combine_wg=16,
    )
    got = h.run(0, q, k, v, [40] + [1] * 35)
    np.testing.assert_allclose(
        got, reference(q, k, v, H, KV), atol=1e-3 if f16 else 2e-5, rtol=1e-3 if f16 else 1e-4
    )  # f16: K/V rounded


@pytest.mark.parametrize(
    "pairs,f16", [("adjacent", True), ("halves", False), ("adjacent", "f16x2"), ("halves", "f16x2")]
)
def test_rope_folded_into_cache_write(device, pairs, f16):
    """PagedAttention.bind(rope=...): a prefill chunk runs RoPE then kv_write, then single tokens run
    RoPE + cache write as one dispatch; every step's output equals numpy's RoPE then attention. The
    f16x2 cache (f16 pairs in u32s) folds only "adjacent" pairs (a pair is one u32 word); "halves"
    keeps RoPE then kv_write."""
    from webllm_py.ops import RoPE
    from .attention_helpers import H, HD, KV, Harness, make_qkv, reference, shuffled_cache
    from .attention_helpers import rope_reference

    N, T0 = 30, 20
    q, k, v = make_qkv(N, 12)
    inv_freq = [10000.0 ** (-2 * i / HD) for i in range(HD // 2)]
    h = Harness(
        device,
        shuffled_cache(device, num_blocks=16, block_size=4, dtype={True: "f16", False: "f32"}.get(f16, f16)),
        max_tokens=32,
    )
    rope = RoPE(device, inv_freq, H, KV, HD, pairs).bind(h.q, h.k, h.step)
    h.bound = h.attn.bind(0, h.q, h.k, h.v, h.o, h.step, h.table, rope=rope)
    folded = not (f16 == "f16x2" and pairs == "halves")
    assert (h.bound.rope_kv is not None) == folded and rope.absorbed == folded
    attention = h.bound

    class Both:  # the layer's order: RoPE (skipped for one token), then attention
        def record(self, rec, n):
            rope.record(rec, n)
            attention.record(rec, n)

    h.bound = Both()
    got = h.run(0, q, k, v, [T0] + [1] * (N - T0))
    pos = np.arange(N)
    qr = rope_reference(q.reshape(N, H, HD), pos, inv_freq, pairs).reshape(N, H * HD)
    kr = rope_reference(k.reshape(N, KV, HD), pos, inv_freq, pairs).reshape(N, KV * HD)
    np.testing.assert_allclose(got, reference(qr, kr, v, H, KV), atol=1e-3 if f16 else 2e-5, rtol=1e-3 if f16 else 1e-4)


@pytest.mark.parametrize("n", [4100, 8200])  # the two large prefill tilings GPUs get (rows not a tile multiple)
def test_gpu_prefill_tilings(device, n):
    from webllm_py.linear import Linear, gpu_matmul_tiling
    from .linear_helpers import assert_close, make_weight, run_linear, upload

    rng = np.random.default_rng(13)
    raw, w = make_weight("Q4_0", n, 128, rng)
    lin = Linear(device, upload(device, raw, "Q4_0", n, 128), matmul=gpu_matmul_tiling(n))
    assert lin.matmul_tiling.tm == 64
    x = rng.standard_normal((70, 128)).astype(np.float32)  # two token tiles, the second partial
    assert_close(run_linear(device, lin, x), x.astype(np.float64) @ w.T, x, w)
