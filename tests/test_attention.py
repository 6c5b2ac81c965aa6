"""Paged attention kernels (kv_write + attention_decode / attention_prefill) vs a numpy reference of
causal softmax attention with GQA, computed in float64 from the same q/k/v.

Tolerance: f32 cache atol 2e-5 + rtol 1e-4 (outputs are O(1) averages of N(0,1) values);
f16 cache: the reference uses K/V rounded to f16 as well, same tolerance x10."""
import asyncio
import random
import struct

import numpy as np
import pytest

from webllm_py.attention import PagedAttention
from webllm_py.kv_cache import PagedKVCache

pytestmark = pytest.mark.gpu

H, KV, HD = 9, 3, 64   # SmolLM2's head layout


def reference(q, k, v, n_heads, n_kv, window=None, scale=None, softcap=None):
    """q [N, H*D], k/v [N, KV*D]: causal attention of every token over positions <= its own."""
    N = q.shape[0]
    D = q.shape[1] // n_heads
    scale = 1 / np.sqrt(D) if scale is None else scale
    qh = q.reshape(N, n_heads, D).astype(np.float64)
    kh = k.reshape(N, n_kv, D).astype(np.float64)
    vh = v.reshape(N, n_kv, D).astype(np.float64)
    out = np.zeros((N, n_heads, D))
    g = n_heads // n_kv
    for h in range(n_heads):
        s = qh[:, h] @ kh[:, h // g].T * scale                 # [N, N]
        if softcap:
            s = softcap * np.tanh(s / softcap)
        i, j = np.indices((N, N))
        mask = j <= i
        if window:
            mask &= (i - j) < window
        s = np.where(mask, s, -np.inf)
        p = np.exp(s - s.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        out[:, h] = p @ vh[:, h // g]
    return out.reshape(N, n_heads * D)


class Harness:
    """Drives PagedAttention like the model does: per step write step/table, record, read out."""

    def __init__(self, device, cache, max_tokens=64, **kw):
        self.device, self.cache = device, cache
        self.attn = PagedAttention(device, cache, H, KV, HD, max_tokens, **kw)
        d = device
        self.q = d.create_buffer(max_tokens * H * HD * 4)
        self.k = d.create_buffer(max_tokens * KV * HD * 4)
        self.v = d.create_buffer(max_tokens * KV * HD * 4)
        self.o = d.create_buffer(max_tokens * H * HD * 4)
        self.step = d.create_buffer(8)
        self.table = d.create_buffer(cache.table_buffer_size())
        self.bound = self.attn.bind(0, self.q, self.k, self.v, self.o, self.step, self.table)

    def step_(self, seq, pos0, q, k, v):
        d, T = self.device, q.shape[0]
        self.cache.ensure(seq, pos0 + T)
        d.write_buffer(self.q, np.ascontiguousarray(q, np.float32))
        d.write_buffer(self.k, np.ascontiguousarray(k, np.float32))
        d.write_buffer(self.v, np.ascontiguousarray(v, np.float32))
        d.write_buffer(self.step, struct.pack("<2I", pos0, T))
        d.write_buffer(self.table, self.cache.table_bytes(seq))
        with d.recorder() as rec:
            self.bound.record(rec, T)
        out = asyncio.run(d.read_buffer(self.o, 0, T * H * HD * 4))
        return np.frombuffer(out, np.float32).reshape(T, H * HD)

    def run(self, seq, q, k, v, chunks):
        outs, pos = [], 0
        for c in chunks:
            outs.append(self.step_(seq, pos, q[pos:pos + c], k[pos:pos + c], v[pos:pos + c]))
            pos += c
        assert pos == q.shape[0]
        return np.concatenate(outs)


def make_qkv(N, seed):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((N, H * HD), dtype=np.float32),
            rng.standard_normal((N, KV * HD), dtype=np.float32),
            rng.standard_normal((N, KV * HD), dtype=np.float32))


def shuffled_cache(device, num_blocks=64, block_size=4, seed=0, **kw):
    cache = PagedKVCache(device, 1, KV, HD, block_size=block_size, num_blocks=num_blocks, **kw)
    random.Random(seed).shuffle(cache._free)  # physical blocks out of order: pages are non-contiguous
    return cache


def chunking(N, size):
    return [min(size, N - i) for i in range(0, N, size)]


@pytest.mark.parametrize("name,chunks", [
    ("whole", lambda N: [N]),
    ("by7", lambda N: chunking(N, 7)),
    ("by_token", lambda N: [1] * N),
    ("prompt_then_decode", lambda N: [37] + [1] * (N - 37)),
])
def test_attention_matches_numpy(device, name, chunks):
    N = 53
    q, k, v = make_qkv(N, 1)
    h = Harness(device, shuffled_cache(device), max_tokens=64)
    got = h.run(0, q, k, v, chunks(N))
    assert h.cache.blocks(0) != sorted(h.cache.blocks(0))  # really non-contiguous pages
    np.testing.assert_allclose(got, reference(q, k, v, H, KV), atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("window", [5, 16])
def test_sliding_window(device, window):
    N = 41
    q, k, v = make_qkv(N, 2)
    ref = reference(q, k, v, H, KV, window=window)
    for chunks in ([N], chunking(N, 7), [20] + [1] * (N - 20)):
        h = Harness(device, shuffled_cache(device, seed=3), max_tokens=64, sliding_window=window)
        np.testing.assert_allclose(h.run(0, q, k, v, chunks), ref, atol=2e-5, rtol=1e-4)


def test_softcap_and_scale(device):
    N = 30
    q, k, v = make_qkv(N, 4)
    q *= 4  # large scores so the cap matters
    ref = reference(q, k, v, H, KV, scale=0.25, softcap=5.0)
    h = Harness(device, shuffled_cache(device), max_tokens=32, scale=0.25, softcap=5.0)
    np.testing.assert_allclose(h.run(0, q, k, v, [11, 1, 1, 17]), ref, atol=2e-5, rtol=1e-4)


def test_f16_cache(device):
    if not device.has_f16:
        pytest.skip("adapter has no shader-f16")
    N = 45
    q, k, v = make_qkv(N, 5)
    ref = reference(q, k.astype(np.float16).astype(np.float32), v.astype(np.float16).astype(np.float32), H, KV)
    h = Harness(device, shuffled_cache(device, dtype="f16"), max_tokens=64)
    np.testing.assert_allclose(h.run(0, q, k, v, [30] + [1] * 15), ref, atol=2e-4, rtol=1e-3)


def test_long_sequence_decode_crosses_many_chunks(device):
    """~100 positions with block_size 3 and decode chunks of 64: online-softmax rescaling across chunks."""
    N = 100
    q, k, v = make_qkv(N, 6)
    h = Harness(device, shuffled_cache(device, num_blocks=40, block_size=3), max_tokens=64)
    got = h.run(0, q, k, v, [60, 38, 1, 1])
    np.testing.assert_allclose(got, reference(q, k, v, H, KV), atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("splits", [1, 3, 16, 56])
def test_decode_split_k(device, splits):
    """Split-K decode (slices merged by attention_combine) equals the reference for any number of
    slices, including more slices than chunks (empty ones) and with a sliding window."""
    N = 90
    q, k, v = make_qkv(N, 7)
    for window in (None, 70):
        h = Harness(device, shuffled_cache(device, num_blocks=40, block_size=4), max_tokens=64,
                    decode_splits=splits, decode_wg=16, sliding_window=window)
        got = h.run(0, q, k, v, [40] + [1] * 50)
        np.testing.assert_allclose(got, reference(q, k, v, H, KV, window=window), atol=2e-5, rtol=1e-4)
