"""Decode attention alone, per layer, on native wgpu or on Dawn (--dawn: the browser backend in
Pyodide under Node, webllm_py.dawn.DawnHost): attention_step over a grid of StepTilings (wg, chunk,
splits, min_split) at 1B and 8B head layouts and several context lengths, with the KV cache element
the planner picks there. Where the step's slices are merged by attention_combine (Dawn), the step
alone is timed too, so the combine dispatch's share shows. Then the CPU adapters' form (kv_write,
attention_decode, attention_combine, each alone and all three). One JSON line per measurement.

    python scripts/attention_step_bench.py [--dawn] [--dawn-flag vulkan_enable_f16_on_nvidia]
        [--positions 512,2048,4096] [--tilings 128,32,32,32:128,32,1,32 ...] [--reps 200] [--quick]

Each timing records `reps` steps of one layer into one command buffer (dependent dispatches, as a
decode step's layers are), submits once and waits: GPU time per step including the per-dispatch cost,
without Python's recording (kernel_bench.py's method).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

# Runs on CPython (native) and, as text, in Pyodide (Dawn): no numpy, no webllm_py.gpu.native here.
_BODY = '''
import struct, time
from webllm_py.attention import PagedAttention, StepTiling
from webllm_py.kv_cache import PagedKVCache
from webllm_py.planner import Adapter, default_step_tiling, kv_cache_dtype


async def _time(dev, record, reps, sync):
    """GPU seconds per recorded step (best of 3 submits of `reps` steps)."""
    rec = dev.recorder()
    record(rec)
    rec.submit()
    await dev.read_buffer(sync, 0, 4)
    best = 1e9
    for _ in range(3):
        rec = dev.recorder()
        for _ in range(reps):
            record(rec)
        t = time.perf_counter()
        rec.submit()
        await dev.read_buffer(sync, 0, 4)
        best = min(best, (time.perf_counter() - t) / reps)
    return best


async def measure(dev, shapes, positions, tilings, reps):
    rows = []
    sync = dev.create_buffer(16)
    adapter = Adapter.of(dev)
    for label, nh, nkv, hd in shapes:
        dtype = kv_cache_dtype(adapter, hd)
        grid = [default_step_tiling(nkv)] + [t for t in (StepTiling(*g) for g in tilings) if t != default_step_tiling(nkv)]
        for n in positions:
            cache = PagedKVCache(dev, 1, nkv, hd, block_size=16, num_blocks=-(-n // 16), dtype=dtype)
            cache.ensure(0, n)
            step = dev.buffer_from(struct.pack("<2I", n - 1, 1))
            table = dev.buffer_from(
                cache.table_bytes(0) + bytes(max(0, cache.table_buffer_size() - len(cache.table_bytes(0))))
            )
            q, o = dev.create_buffer(nh * hd * 4), dev.create_buffer(nh * hd * 4)
            k, v = dev.create_buffer(nkv * hd * 4), dev.create_buffer(nkv * hd * 4)
            for t in grid:
                row = dict(shape=label, positions=n, dtype=dtype, form="step", tiling=list(vars(t).values()))
                row["default"] = t == grid[0]
                try:
                    att = PagedAttention(dev, cache, nh, nkv, hd, 64, fused=True, step_tiling=t)
                    b = att.bind(0, q, k, v, o, step, table)
                    row["us"] = round(1e6 * await _time(dev, lambda rec: b.record(rec, 1), reps, sync), 2)
                    row["combine"] = b.combine is not None
                    if b.combine is not None:
                        us = await _time(dev, lambda rec: rec.dispatch(b.step, nkv, t.splits), reps, sync)
                        row["step_only_us"] = round(1e6 * us, 2)
                except Exception as e:  # a tiling the adapter cannot take (e.g. too many threads)
                    row["error"] = f"{type(e).__name__}: {e}"[:200]
                rows.append(row)
            # The CPU adapters' form (kv_write, attention_decode, attention_combine), the planner's tiling
            att = PagedAttention(dev, cache, nh, nkv, hd, 64, fused=False)
            b = att.bind(0, q, k, v, o, step, table)
            row = dict(shape=label, positions=n, dtype=dtype, form="unfused", wg=att.plan.decode_wg, splits=att.splits)
            parts = [
                ("kv_write_us", lambda rec: rec.dispatch(b.kv_write, -(-nkv * hd // 64))),
                ("decode_us", lambda rec: rec.dispatch(b.decode, nh, att.splits)),
                ("us", lambda rec: b.record(rec, 1)),
            ]
            if b.combine is not None:
                parts.insert(2, ("combine_us", lambda rec: rec.dispatch(b.combine, nh, -(-hd // att.combine_wg))))
            for key, record in parts:
                row[key] = round(1e6 * await _time(dev, record, reps, sync), 2)
            rows.append(row)
    return rows
'''

SHAPES = [("8b", 32, 8, 128), ("1b", 32, 8, 64)]
GRID = [
    (128, 32, 32, 32),
    (128, 32, 32, 64),
    (128, 32, 32, 128),
    (128, 32, 32, 256),
    (128, 32, 16, 32),
    (256, 32, 32, 32),
    (256, 64, 16, 64),
    (512, 64, 32, 64),
    (64, 16, 32, 16),
    (128, 16, 32, 16),
    (256, 32, 64, 32),
    (128, 32, 1, 32),
    (256, 32, 1, 32),
    (256, 64, 1, 64),
    (512, 64, 1, 64),
    (1024, 128, 1, 128),
    (512, 32, 32, 32),
    (512, 32, 16, 64),
    (256, 32, 16, 64),
    (1024, 64, 1, 64),
    (1024, 64, 16, 64),
]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dawn", action="store_true", help="through Dawn (DawnHost), not native wgpu")
    p.add_argument("--dawn-flag", action="append", default=[], help="a Dawn toggle (repeatable)")
    p.add_argument("--positions", default="512,2048,4096")
    p.add_argument("--tilings", help="colon-separated wg,chunk,splits,min_split (default: a built-in grid)")
    p.add_argument("--reps", type=int, default=200)
    p.add_argument("--quick", action="store_true", help="1B layout, 64 positions, 3 tilings, 3 reps (CPU adapters)")
    a = p.parse_args()
    positions = [int(x) for x in a.positions.split(",")]
    tilings = [tuple(int(x) for x in t.split(",")) for t in a.tilings.split(":")] if a.tilings else GRID
    shapes, reps = SHAPES, a.reps
    if a.quick:
        shapes, positions, tilings, reps = SHAPES[1:], [64], [(64, 8, 4, 8), (64, 8, 1, 8)], 3
    call = f"await measure(dev, {shapes!r}, {positions!r}, {tilings!r}, {reps})"
    if a.dawn:
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
        from webllm_py.dawn import DawnHost

        code = "from webllm_py.gpu.browser import BrowserDevice\ndev = await BrowserDevice.create()\n"
        with DawnHost(a.dawn_flag, timeout=600) as host:
            rows = host.exec(_BODY + "\n" + code + call)
        backend = "dawn"
    else:
        import asyncio

        from webllm_py.gpu.native import NativeDevice

        ns: dict = {}
        exec(_BODY, ns)
        dev = NativeDevice()
        rows = asyncio.run(ns["measure"](dev, shapes, positions, tilings, reps))
        backend = "native"
    for r in rows:
        print(json.dumps(dict(backend=backend, **r)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
