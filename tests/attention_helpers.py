"""The attention tests' harness (test_attention.py, test_attention_prefill_forms.py, test_kv_cache.py):
a numpy reference of causal softmax attention with GQA in float64, a driver that runs PagedAttention as
the model does, random q/k/v and a KV cache whose pages are out of order."""

import asyncio
import random
import struct

import numpy as np

from webllm_py.attention import PagedAttention
from webllm_py.kv_cache import PagedKVCache

H, KV, HD = 9, 3, 64  # SmolLM2's head layout


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
        s = qh[:, h] @ kh[:, h // g].T * scale  # [N, N]
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


U = 2.0**-11  # f16's unit roundoff


def sgmat_bound(q, k, v, n_heads, n_kv, window=None, softcap=None):
    """attention_prefill_sgmat's error bound per output element (numpy, float64; derived in
    tests/test_attention_prefill_sgmat.py's doc), k and v f16 values (the kernel runs over f16 caches only)."""
    N = q.shape[0]
    D = q.shape[1] // n_heads
    scale = 1 / np.sqrt(D)
    g = n_heads // n_kv
    qh = q.reshape(N, n_heads, D).astype(np.float64)
    kh = k.reshape(N, n_kv, D).astype(np.float64)
    vh = v.reshape(N, n_kv, D).astype(np.float64)
    i, j = np.indices((N, N))
    mask = j <= i
    if window:
        mask &= (i - j) < window
    out = np.zeros((N, n_heads, D))
    # each query row's power of two (the smallest s >= 1 with max |q * scale| / s <= 2^14): its staged
    # values below 2^-14 s are f16 subnormals, off by up to 2^-25 s each
    amax = np.abs(q.reshape(N, n_heads, D).astype(np.float32) * np.float32(scale)).max(axis=2).astype(np.float64)
    row_s = 2.0 ** np.maximum(0.0, np.ceil(np.log2(np.maximum(amax, 1.0)) - 14))
    for h in range(n_heads):
        s = qh[:, h] @ kh[:, h // g].T * scale
        if softcap:  # |d tanh| <= 1: a score's error does not grow
            s = softcap * np.tanh(s / softcap)
        a = np.abs(qh[:, h]) @ np.abs(kh[:, h // g]).T * scale
        sub = 2.0**-25 * row_s[:, h : h + 1] * np.abs(kh[:, h // g]).sum(axis=1)[None, :]
        delta = np.where(mask, (U + D * 2.0**-24) * a + sub, 0).max(axis=1, keepdims=True)
        p = np.where(mask, np.exp(s - np.where(mask, s, -np.inf).max(axis=1, keepdims=True)), 0)
        p /= p.sum(axis=1, keepdims=True)
        pv = p @ np.abs(vh[:, h // g])  # sum_j p_j |v_j| per dim
        out[:, h] = (np.exp(2 * delta) - 1) * pv + U * pv + N * 2.0**-25 * np.abs(v).max()
    return out.reshape(N, n_heads * D) + 1e-6


class Harness:
    """Drives PagedAttention like the model does: per step write step/table, record, read out."""

    def __init__(self, device, cache, max_tokens=64, layout=(H, KV, HD), **kw):
        self.device, self.cache = device, cache
        self.heads, kv, self.head_dim = layout
        self.attn = PagedAttention(device, cache, *layout, max_tokens, **kw)
        d = device
        self.q = d.create_buffer(max_tokens * self.heads * self.head_dim * 4)
        self.k = d.create_buffer(max_tokens * kv * self.head_dim * 4)
        self.v = d.create_buffer(max_tokens * kv * self.head_dim * 4)
        self.o = d.create_buffer(max_tokens * self.heads * self.head_dim * 4)
        self.step = d.create_buffer(8)
        self.table = d.create_buffer(cache.table_buffer_size())
        self.bound = self.attn.bind(0, self.q, self.k, self.v, self.o, self.step, self.table)

    def step_(self, seq, pos0, q, k, v):
        d, T = self.device, q.shape[0]
        self.cache.ensure(seq, pos0 + T, first_new=pos0)
        d.write_buffer(self.q, np.ascontiguousarray(q, np.float32))
        d.write_buffer(self.k, np.ascontiguousarray(k, np.float32))
        d.write_buffer(self.v, np.ascontiguousarray(v, np.float32))
        d.write_buffer(self.step, struct.pack("<2I", pos0, T))
        d.write_buffer(self.table, self.cache.table_bytes(seq))
        with d.recorder() as rec:
            self.bound.record(rec, T)
        out = asyncio.run(d.read_buffer(self.o, 0, T * self.heads * self.head_dim * 4))
        return np.frombuffer(out, np.float32).reshape(T, self.heads * self.head_dim)

    def run(self, seq, q, k, v, chunks):
        outs, pos = [], 0
        for c in chunks:
            outs.append(self.step_(seq, pos, q[pos : pos + c], k[pos : pos + c], v[pos : pos + c]))
            pos += c
        assert pos == q.shape[0]
        return np.concatenate(outs)


def make_qkv(N, seed, layout=(H, KV, HD)):
    rng = np.random.default_rng(seed)
    h, kv, hd = layout
    return (
        rng.standard_normal((N, h * hd), dtype=np.float32),
        rng.standard_normal((N, kv * hd), dtype=np.float32),
        rng.standard_normal((N, kv * hd), dtype=np.float32),
    )


def shuffled_cache(device, num_blocks=64, block_size=4, seed=0, layout=(H, KV, HD), n_layers=1, **kw):
    cache = PagedKVCache(device, n_layers, layout[1], layout[2], block_size=block_size, num_blocks=num_blocks, **kw)
    random.Random(seed).shuffle(cache._free)  # physical blocks out of order: pages are non-contiguous
    return cache


def chunking(N, size):
    return [min(size, N - i) for i in range(0, N, size)]


def rope_reference(x, positions, inv_freq, pairs):
    """x: [T, H, hd]. Rotation of pairs by angle pos*inv_freq, written independently of the kernel."""
    out = x.astype(np.float64).copy()
    half = len(inv_freq)
    for t, p in enumerate(positions):
        ang = p * np.asarray(inv_freq, np.float64)
        c, s = np.cos(ang), np.sin(ang)
        if pairs == "adjacent":
            a, b = x[t, :, 0 : 2 * half : 2], x[t, :, 1 : 2 * half : 2]
            out[t, :, 0 : 2 * half : 2] = a * c - b * s
            out[t, :, 1 : 2 * half : 2] = a * s + b * c
        else:
            a, b = x[t, :, :half], x[t, :, half : 2 * half]
            out[t, :, :half] = a * c - b * s
            out[t, :, half : 2 * half] = a * s + b * c
    return out


def head_norm_reference(x, n_heads, head_dim, w, eps, offset=0.0):
    """x [T, n_heads * head_dim]: each head's RMSNorm times (w + offset) (Gemma 3's q/k norms), in float64:
    [T, n_heads, head_dim]."""
    x = x.reshape(x.shape[0], n_heads, head_dim).astype(np.float64)
    return x / np.sqrt((x**2).mean(-1, keepdims=True) + eps) * (w + offset)
