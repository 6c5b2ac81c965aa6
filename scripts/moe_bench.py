"""Mixture-of-experts decode kernels on the device machine: GB/s of the expert matvecs at Mixtral-8x7B
shapes (8 experts, top-2; gate/up [14336, 4096], down [4096, 14336]) for both work splits, next to the
dense decode matvec (Linear) over one matrix of the same shape. One JSON line per measurement.

    python scripts/moe_bench.py [--quick]      # --quick: small shapes (e.g. on lavapipe)

GB/s counts the bytes of the chosen experts' weights only (2 of 8), which is all the kernel reads.
Timing as scripts/kernel_bench.py: `reps` dispatches recorded into one command buffer, one submit,
one wait. Weights are random bytes with sane f16 scales (random F16 values for F16).
"""

from __future__ import annotations

import asyncio
import json
import struct
import sys
import time
from types import SimpleNamespace

import numpy as np

sys.path.insert(0, ".")
from webllm_py.formats.quants import GGMLType, TensorInfo, row_nbytes  # noqa: E402
from webllm_py.formats.source import BytesSource  # noqa: E402
from webllm_py.gpu.native import NativeDevice  # noqa: E402
from webllm_py.linear import Linear  # noqa: E402
from webllm_py.models.mixtral import ExpertMatvec  # noqa: E402
from webllm_py.weights import GPUTensor, upload_tensor  # noqa: E402

QUICK = "--quick" in sys.argv
dev = NativeDevice()
rng = np.random.default_rng(0)
sync_buf = dev.create_buffer(16)
E, TOP_K = 8, 2
REPS = 5 if QUICK else 100
SHAPES = [("gate_up", 256, 512), ("down", 512, 256)] if QUICK else [("gate_up", 14336, 4096), ("down", 4096, 14336)]


def emit(**kw):
    print(json.dumps(kw), flush=True)


def sync():
    asyncio.run(dev.read_buffer(sync_buf, 0, 4))


def seconds_per(record) -> float:
    with dev.recorder() as rec:  # warm-up (pipeline creation, first touch)
        record(rec)
    sync()
    best = 1e9
    for _ in range(3):
        rec = dev.recorder()
        for _ in range(REPS):
            record(rec)
        t = time.perf_counter()
        rec.submit()
        sync()
        best = min(best, (time.perf_counter() - t) / REPS)
    return best


# Byte offsets of the f16 scales in a block: random bytes there would include NaNs and subnormals,
# which some GPUs decode on slow paths; real weights have sane scales.
BLOCK = {"Q4_0": (18, (0,)), "Q8_0": (34, (0,))}


def raw_weight(qtype: str, rows: int, k: int) -> bytes:
    if qtype == "F16":
        return rng.standard_normal(rows * k, dtype=np.float32).astype(np.float16).tobytes()
    raw = rng.integers(0, 256, rows * row_nbytes(GGMLType[qtype], k), dtype=np.uint8)
    size, scales = BLOCK[qtype]
    blocks = raw.reshape(-1, size)
    for off in scales:
        blocks[:, off : off + 2] = np.frombuffer(np.float16(0.01).tobytes(), np.uint8)
    return raw.tobytes()


emit(adapter=dev.info.description.strip(), fallback=dev.info.is_fallback)
moe = SimpleNamespace(
    idx=dev.buffer_from(struct.pack("<2I", 3, 6)), weight=dev.buffer_from(struct.pack("<2f", 0.6, 0.4))
)
for qtype in ("Q4_0", "Q8_0", "F16"):
    for part, n, k in SHAPES:
        raw = raw_weight(qtype, E * n, k)
        experts = GPUTensor(dev.buffer_from(raw + b"\0" * 4), GGMLType[qtype], (E, n, k), f"{part}_exps")
        combine = part == "down"
        x = dev.create_buffer(4 * TOP_K * k if combine else 4 * k)
        y = dev.create_buffer(4 * (n if combine else TOP_K * n))
        read = TOP_K * n * row_nbytes(GGMLType[qtype], k)
        for split_k, wg in ((True, 32), (True, 64), (True, 128), (True, 256), (False, 64)):
            b = ExpertMatvec(dev, experts, TOP_K, combine=combine, split_k=split_k, wg=wg).bind(x, y, moe)
            dt = seconds_per(lambda rec: b.record(rec, 1))
            emit(
                kind="moe_matvec",
                qtype=qtype,
                part=part,
                N=n,
                K=k,
                split_k=split_k,
                wg=wg,
                us=round(dt * 1e6, 1),
                GBps=round(read / dt / 1e9, 1),
            )
        # The dense decode matvec over one [n, k] matrix, for scale (reads half the bytes of two experts).
        one = upload_tensor(
            dev,
            BytesSource(raw_weight(qtype, n, k)),
            TensorInfo("w", (k, n), int(GGMLType[qtype]), 0, n * row_nbytes(GGMLType[qtype], k)),
        )
        lb = Linear(dev, one).bind(dev.create_buffer(4 * k), dev.create_buffer(4 * n))
        dt = seconds_per(lambda rec: lb.record(rec, 1))
        emit(
            kind="dense_matvec",
            qtype=qtype,
            part=part,
            N=n,
            K=k,
            us=round(dt * 1e6, 1),
            GBps=round(read / TOP_K / dt / 1e9, 1),
        )
