"""attention_step on a real GPU vs numpy: RoPE (halves, Llama 3 frequencies) + cache write + GQA
attention over a random f16 cache, at context lengths that use 1 to all slices, for the 8B and 1B
head layouts. The split merge (last-arriving workgroup, atomic counter) is stressed by recording
OUTS dispatches into one submission, each into its own output buffer, ROUNDS times: every output
must match the reference, and the arrival counters must be back at 0 afterwards.

    python scripts/attention_step_check.py [--quick]      # prints one JSON line per case; exit 1 on a mismatch
"""

from __future__ import annotations

import asyncio
import json
import struct
import sys

import numpy as np

sys.path.insert(0, ".")
from webllm_py.attention import PagedAttention  # noqa: E402
from webllm_py.gpu.native import NativeDevice  # noqa: E402
from webllm_py.kv_cache import PagedKVCache  # noqa: E402
from webllm_py.ops import RoPE  # noqa: E402

QUICK = "--quick" in sys.argv
OUTS, ROUNDS = (4, 2) if QUICK else (32, 5)


def rope_halves(x, pos, inv_freq):
    """x [heads, hd] float64: dims i and i + hd/2 turn by pos * inv_freq[i]."""
    half = len(inv_freq)
    ang = pos * np.asarray(inv_freq, np.float64)
    c, s = np.cos(ang), np.sin(ang)
    a, b = x[:, :half], x[:, half:]
    return np.concatenate([a * c - b * s, a * s + b * c], axis=1)


def main() -> int:
    dev = NativeDevice()
    rng = np.random.default_rng(0)
    ok = True
    B = 16
    for label, nh, nkv, hd in (("8b", 32, 8, 128), ("1b", 32, 8, 64)):
        inv_freq = [500000.0 ** (-2 * i / hd) for i in range(hd // 2)]
        for n in (1, 70) if QUICK else (1, 17, 64, 65, 550, 2048, 4111):
            blocks = -(-n // B)
            cache = PagedKVCache(dev, 1, nkv, hd, block_size=B, num_blocks=blocks + 3, dtype="f16")
            cache._free = list(rng.permutation(cache._free))  # pages out of order
            cache.ensure(0, n)
            # Positions 0..n-2 already in the cache (random, f16); position n-1 comes in through k/v.
            kc = rng.standard_normal((cache.num_blocks, B, nkv, hd)).astype(np.float16)
            vc = rng.standard_normal((cache.num_blocks, B, nkv, hd)).astype(np.float16)
            dev.write_buffer(cache.k[0], kc.tobytes())
            dev.write_buffer(cache.v[0], vc.tobytes())
            q = rng.standard_normal((nh, hd), dtype=np.float32)
            k = rng.standard_normal((nkv, hd), dtype=np.float32)
            v = rng.standard_normal((nkv, hd), dtype=np.float32)
            step = dev.buffer_from(struct.pack("<2I", n - 1, 1))
            tb = cache.table_bytes(0)
            table = dev.buffer_from(tb + bytes(max(0, cache.table_buffer_size() - len(tb))))
            qb, kb, vb = dev.buffer_from(q), dev.buffer_from(k), dev.buffer_from(v)
            att = PagedAttention(dev, cache, nh, nkv, hd, 8, fused=True)
            rope = RoPE(dev, inv_freq, nh, nkv, hd, "halves").bind(qb, kb, step)
            outs = [dev.create_buffer(nh * hd * 4) for _ in range(OUTS)]
            bound = [att.bind(0, qb, kb, vb, o, step, table, rope=rope) for o in outs]
            assert rope.absorbed and bound[0].step is not None
            # numpy: rotate q and the new k, gather the sequence's rows through the block table
            pos = n - 1
            qr = rope_halves(q.astype(np.float64), pos, inv_freq)
            kr = rope_halves(k.astype(np.float64), pos, inv_freq).astype(np.float16).astype(np.float64)
            phys = np.frombuffer(tb, np.uint32)
            rows = [(phys[p // B], p % B) for p in range(n - 1)]
            K = np.array([kc[b, s] for b, s in rows], np.float64).reshape(n - 1, nkv, hd)
            V = np.array([vc[b, s] for b, s in rows], np.float64).reshape(n - 1, nkv, hd)
            K = np.concatenate([K, kr[None]], 0)
            V = np.concatenate([V, v.astype(np.float16).astype(np.float64)[None]], 0)
            g = nh // nkv
            ref = np.zeros((nh, hd))
            for h in range(nh):
                s = K[:, h // g] @ qr[h] / np.sqrt(hd)
                p = np.exp(s - s.max())
                ref[h] = p @ V[:, h // g] / p.sum()
            worst = 0.0
            for _ in range(ROUNDS):
                with dev.recorder() as rec:
                    for b in bound:
                        b.record(rec, 1)
                for o in outs:
                    got = np.frombuffer(asyncio.run(dev.read_buffer(o)), np.float32).reshape(nh, hd)
                    worst = max(worst, float(np.abs(got - ref).max()))
            counters = (
                np.frombuffer(asyncio.run(dev.read_buffer(att.scratch, 0, 4 * nkv)), np.uint32)
                if att.step_tiling.splits > 1
                else np.zeros(1)
            )
            written = np.frombuffer(asyncio.run(dev.read_buffer(cache.k[0])), np.float16).reshape(kc.shape)
            b, s = phys[pos // B], pos % B
            k_ok = bool(
                np.array_equal(written[b, s], kr.astype(np.float16))
                or np.abs(written[b, s].astype(np.float64) - kr).max() < 2e-3
            )
            good = worst < 2e-3 and not counters.any() and k_ok
            ok &= good
            print(
                json.dumps(
                    dict(
                        kind="attention_step_check",
                        shape=label,
                        positions=n,
                        tiling=list(vars(att.step_tiling).values()),
                        dispatches=OUTS * ROUNDS,
                        max_abs_err=worst,
                        counters_zero=not counters.any(),
                        k_written=k_ok,
                        ok=good,
                    )
                ),
                flush=True,
            )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
