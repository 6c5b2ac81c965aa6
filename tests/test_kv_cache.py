"""Paged KV cache: the allocator's bookkeeping, and sequences sharing the cache give the same
attention outputs as each alone (checked against the numpy reference of test_attention)."""

import numpy as np
import pytest

from .attention_helpers import HD, KV, H, Harness, make_qkv, reference, shuffled_cache
from webllm_py.errors import ContextOverflowError, KVCacheFullError, ModelTooLargeError
from webllm_py.kv_cache import KVCaches, PagedKVCache, window_blocks

pytestmark = pytest.mark.gpu


def test_allocator_ensure_truncate_free(device):
    c = PagedKVCache(device, 2, KV, HD, block_size=4, num_blocks=10)
    assert len(c.k) == len(c.v) == 2 and c.k[0].size == 10 * 4 * KV * HD * 4
    c.ensure(0, 9)  # 3 blocks
    assert c.length(0) == 9 and len(c.blocks(0)) == 3 and c.free_blocks == 7
    c.ensure(0, 12)  # still 3 blocks
    assert len(c.blocks(0)) == 3 and c.length(0) == 12
    c.ensure(1, 1)
    assert c.free_blocks == 6 and not set(c.blocks(0)) & set(c.blocks(1))
    first = c.blocks(0)
    c.truncate(0, 5)  # keep 2 blocks, the first two
    assert c.blocks(0) == first[:2] and c.length(0) == 5 and c.free_blocks == 7
    assert np.frombuffer(c.table_bytes(0), "<u4").tolist() == first[:2]
    c.free(0)
    c.free(1)
    assert c.free_blocks == 10 and c.length(0) == 0
    assert len(c.table_bytes(0)) == 4  # never an empty write


def test_out_of_blocks_is_typed_and_leaves_cache_usable(device):
    c = shuffled_cache(device, num_blocks=12, block_size=4)
    h = Harness(device, c, max_tokens=32)
    qa, ka, va = make_qkv(30, 10)
    h.run(0, qa, ka, va, [30])  # 8 blocks
    with pytest.raises(KVCacheFullError, match="KV cache is full"):
        c.ensure(1, 20)  # needs 5, only 4 free
    assert isinstance(KVCacheFullError("x"), ContextOverflowError)
    assert c.free_blocks == 4 and c.blocks(1) == []  # all or nothing
    # The cache still works: a short sequence fits, and after freeing seq 0 a long one does too.
    qb, kb, vb = make_qkv(16, 11)
    np.testing.assert_allclose(h.run(1, qb, kb, vb, [16]), reference(qb, kb, vb, H, KV), atol=2e-5, rtol=1e-4)
    c.free(0)
    c.free(1)
    assert c.free_blocks == 12
    qc, kc, vc = make_qkv(31, 12)
    np.testing.assert_allclose(h.run(2, qc, kc, vc, [20, 1, 10]), reference(qc, kc, vc, H, KV), atol=2e-5, rtol=1e-4)


def test_per_sequence_limit_is_context_overflow(device):
    c = PagedKVCache(device, 1, KV, HD, block_size=4, num_blocks=10, max_blocks_per_seq=3)
    with pytest.raises(ContextOverflowError, match="at most 12"):
        c.ensure(0, 13)
    c.ensure(0, 12)


def test_binding_size_checked_before_allocation(device):
    with pytest.raises(ModelTooLargeError, match="binding limit"):
        PagedKVCache(device, 1, KV, HD, block_size=16, num_blocks=10_000_000)


def test_interleaved_sequences_match_each_alone(device):
    """Two sequences of different lengths, prefilled in chunks and decoded alternately step by step,
    in one cache with shuffled blocks, give the outputs each gives alone (and the reference)."""
    c = shuffled_cache(device, num_blocks=40, block_size=4, seed=7)
    h = Harness(device, c, max_tokens=32)
    seqs = {0: make_qkv(40, 20), 1: make_qkv(23, 21)}
    plans = {0: [13, 7] + [1] * 20, 1: [5] + [1] * 18}
    outs = {0: [], 1: []}
    pos = {0: 0, 1: 0}
    for i in range(max(len(p) for p in plans.values())):
        for s in (0, 1):
            if i < len(plans[s]):
                n = plans[s][i]
                q, k, v = (a[pos[s] : pos[s] + n] for a in seqs[s])
                outs[s].append(h.step_(s, pos[s], q, k, v))
                pos[s] += n
    for s in (0, 1):
        together = np.concatenate(outs[s])
        alone = Harness(device, shuffled_cache(device, seed=s), max_tokens=32).run(5, *seqs[s], plans[s])
        np.testing.assert_allclose(together, alone, atol=1e-6, rtol=1e-6)
        np.testing.assert_allclose(together, reference(*seqs[s], H, KV), atol=2e-5, rtol=1e-4)
    # The two sequences' pages interleave in the physical pool.
    assert not set(c.blocks(0)) & set(c.blocks(1))
    c.free(0)
    c.free(1)
    assert c.free_blocks == 40


def test_truncate_then_continue_reuses_prefix(device):
    """Prefix reuse: keep the first 17 positions, overwrite the rest with a new continuation."""
    c = shuffled_cache(device, num_blocks=30, block_size=4, seed=9)
    h = Harness(device, c, max_tokens=32)
    q, k, v = make_qkv(30, 30)
    h.run(0, q, k, v, [30])
    c.truncate(0, 17)
    q2, k2, v2 = make_qkv(30, 31)
    q2[:17], k2[:17], v2[:17] = q[:17], k[:17], v[:17]
    outs = [h.step_(0, 17, q2[17:25], k2[17:25], v2[17:25])]
    outs += [h.step_(0, p, q2[p : p + 1], k2[p : p + 1], v2[p : p + 1]) for p in range(25, 30)]
    np.testing.assert_allclose(np.concatenate(outs), reference(q2, k2, v2, H, KV)[17:], atol=2e-5, rtol=1e-4)


def test_sliding_window_releases_blocks_out_of_the_window(device):
    """Window 10, blocks of 4: of the 10 blocks of 40 positions (chunks of up to 8), those behind the
    window go back to the pool as the sequence grows, so another sequence of 6 blocks fits beside it;
    outputs as the windowed reference. An attention over everything beside it turns the release off."""
    c = PagedKVCache(device, 1, KV, HD, block_size=4, num_blocks=10)
    h = Harness(device, c, max_tokens=8, sliding_window=10)
    assert c.window == 10
    q, k, v = make_qkv(40, 13)
    out = h.run(0, q, k, v, [8, 1, 1, 8, 1, 8, 1, 8, 4])
    np.testing.assert_allclose(out, reference(q, k, v, H, KV, window=10), atol=2e-5, rtol=1e-4)
    blocks = c.blocks(0)
    assert len(blocks) == 10 and c.released(0) == 24 and blocks[:6] == [None] * 6 and c.free_blocks == 6
    assert np.frombuffer(c.table_bytes(0), "<u4").tolist()[6:] == blocks[6:]
    c.ensure(1, 24)  # the released blocks serve another sequence
    c.truncate(0, 30)
    c.free(0)
    c.free(1)
    assert c.free_blocks == 10
    Harness(device, c, max_tokens=8)  # a layer attending to all positions
    assert c.window is None


def test_caches_by_window_release_only_the_windowed_pool(device):
    """Layers local, local, global, local (window 10, blocks of 4, steps of up to 8): two caches, each
    with its own pool and table. Over 40 positions the local cache's blocks in use never exceed
    window_blocks (ceil((10 + 8 - 2) / 4) + 1 = 5) while the global one's grow to 10; a sequence the
    local pool cannot hold fails in both caches at once (all or nothing)."""
    caches = KVCaches(
        device, [10, 10, None, 10], KV, HD, block_size=4, blocks_per_seq=10, max_sequences=2, max_tokens=8
    )
    local, glob = caches[10], caches[None]
    assert len(caches) == 2 and local.layers == [0, 1, 3] and glob.layers == [2] and set(local.k) == {0, 1, 3}
    assert local.num_blocks == 2 * window_blocks(10, 8, 4) == 10 and glob.num_blocks == 20
    assert local.table is not glob.table and local.max_blocks_per_seq == glob.max_blocks_per_seq == 10
    local.attend_window(10)  # as the models' PagedAttentions do
    glob.attend_window(None)
    pos, held = 0, []
    for n in [8, 1, 1, 8, 1, 8, 1, 8, 4]:
        caches.ensure(0, pos + n, first_new=pos)
        pos += n
        held.append((sum(b is not None for b in local.blocks(0)), len(glob.blocks(0))))
        assert len(np.frombuffer(local.table_bytes(0), "<u4")) == len(glob.blocks(0))  # logical entries alike
    assert max(h for h, _ in held) <= 5 and [g for _, g in held] == sorted(g for _, g in held) and held[-1][1] == 10
    assert local.released(0) == 24 and glob.released(0) == 0
    # prefix reuse: keeping 33 positions, the next token (at 33) reads from 24 on, past the released blocks;
    # keeping 32, it would read position 23
    assert caches.resumable(0, 33) and not caches.resumable(0, 32)
    with pytest.raises(KVCacheFullError):
        caches.ensure(1, 40, first_new=0)  # 10 local blocks, 6 free (sequence 0 holds blocks 6..9)
    assert glob.free_blocks == 10 and local.free_blocks == 6 and not glob.blocks(1) and not local.blocks(1)
    caches.truncate(0, 30)
    assert len(glob.blocks(0)) == len(local.blocks(0)) == 8
    caches.free(0)
    assert local.free_blocks == 10 and glob.free_blocks == 20
    caches.destroy()


def test_gemma3_270m_kv_memory_at_32k_positions():
    """Gemma-3-270M's layout (18 layers, every 6th global, window 512; 1 KV head of 256; blocks of 16,
    prefill chunks of 64): the local layers' pools hold 37 blocks per sequence whatever the context, so
    at 32k positions the KV cache is 6,699 blocks of layers x positions instead of 36,864 (0.18x), and at
    128k 3 x 8,192 + 15 x 37."""
    windows = [None if (i + 1) % 6 == 0 else 512 for i in range(18)]
    for ctx in (32768, 131072):
        plan = KVCaches.plan(windows, 16, ctx // 16, 64)
        assert plan == {512: ([i for i in range(18) if (i + 1) % 6], 37), None: ([5, 11, 17], ctx // 16)}
    per_block = 2 * 16 * 256 * 2  # K and V, f16
    before = sum(len(ls) * p for ls, p in KVCaches.plan([None] * 18, 16, 2048, 64).values()) * per_block
    after = sum(len(ls) * p for ls, p in KVCaches.plan(windows, 16, 2048, 64).values()) * per_block
    assert (before, after) == (36864 * per_block, 6699 * per_block)  # 576 MiB -> 104.7 MiB per sequence
