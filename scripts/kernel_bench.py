"""Single-kernel microbenchmarks for the device machine: GB/s of each decode matvec variant over
weight shapes of Llama-3.2-1B and Llama-3.1-8B, fused Q/K/V and gate/up dispatches, and the
per-dispatch floor. One JSON line per measurement on stdout.

    python scripts/kernel_bench.py [--quick]      # --quick: a small subset (e.g. on lavapipe)

Each timing records `reps` dispatches of one kernel into one command buffer, then times its
submit and completion: GPU time including the per-dispatch cost (barriers between dependent
dispatches) the model pays, without Python's recording. Weights are random bytes (speed does not depend on values).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

import numpy as np

sys.path.insert(0, ".")
from webllm_py.formats.quants import GGMLType, TensorInfo, row_nbytes  # noqa: E402
from webllm_py.formats.source import BytesSource  # noqa: E402
from webllm_py.gpu.native import NativeDevice  # noqa: E402
from webllm_py.linear import Linear, MatvecGroup, MatvecTiling  # noqa: E402
from webllm_py.weights import upload_tensor  # noqa: E402

QUICK = "--quick" in sys.argv
dev = NativeDevice(use_subgroups=True)
rng = np.random.default_rng(0)


def weight(qtype: str, n: int, k: int):
    nbytes = n * row_nbytes(GGMLType[qtype], k)
    raw = rng.integers(0, 256, nbytes, dtype=np.uint8)
    # sane f16 scales: set every byte pair's high byte to a small exponent is overkill; random is fine
    info = TensorInfo("w", (k, n), int(GGMLType[qtype]), 0, nbytes)
    return upload_tensor(dev, BytesSource(raw.tobytes()), info), nbytes


def sync():
    asyncio.run(dev.read_buffer(sync_buf, 0, 4))


sync_buf = dev.create_buffer(16)


def time_dispatches(record, reps: int) -> float:
    """GPU seconds per recorded unit: everything is recorded first (Python's cost is not timed),
    then one submit and a wait."""
    with dev.recorder() as rec:  # warm-up
        record(rec)
    sync()
    best = 1e9
    for _ in range(2 if QUICK else 3):
        rec = dev.recorder()
        for _ in range(reps):
            record(rec)
        t = time.perf_counter()
        rec.submit()
        sync()
        best = min(best, (time.perf_counter() - t) / reps)
    return best


def time_alternating(recs: dict, reps: int | None = None) -> dict:
    """time_dispatches of each form in recs ({name: record}; reps units a submit, REPS by default), the forms
    alternated in rounds (3, or 1 with --quick) so that drift hits them alike: each one's best, by name."""
    best = dict.fromkeys(recs, 1e9)
    for _ in range(3 if not QUICK else 1):
        for name, r in recs.items():
            best[name] = min(best[name], time_dispatches(r, reps or REPS))
    return best


def emit(**kw):
    print(json.dumps(kw), flush=True)


REPS = 5 if QUICK else 200
SHAPES_8B = [(4096, 4096), (1024, 4096), (14336, 4096), (4096, 14336), (128256, 4096)]
SHAPES_1B = [(2048, 2048), (512, 2048), (8192, 2048), (2048, 8192), (128256, 2048)]
if QUICK:
    SHAPES_8B, SHAPES_1B = [(256, 512)], [(128, 256)]
VARIANTS = [("generic", 64, 2, False)] + [
    ("q4", wg, r, sg)
    for wg, r in [(32, 1), (32, 2), (32, 4), (64, 1), (64, 2), (64, 4), (64, 8), (128, 2), (128, 4), (128, 8), (256, 4)]
    for sg in (False, True)
]
if QUICK:
    VARIANTS = VARIANTS[:3]

emit(adapter=dev.info.description.strip(), features=sorted(dev.features))

ONLY = [a.split("=", 1)[1] for a in sys.argv if a.startswith("--only=")]  # e.g. --only=floor,prefill_attention


def want(part: str) -> bool:
    return not ONLY or part in ONLY[0].split(",")


def bench_prefill_attention():
    """attention_prefill per layer (one dispatch) for a prompt chunk: Llama-3.2-1B and -3.1-8B head
    layouts, 128 tokens over 384 earlier positions and 512 from the start, each KV cache element the
    adapter takes, the planner's tiling and others (TQ, TK, L[, R]; L = 1: a thread per query row)."""
    import struct
    from webllm_py.attention import PagedAttention
    from webllm_py.kv_cache import PagedKVCache
    from webllm_py.planner import KernelPolicy, PrefillTiling

    dtypes = ["f16x2", "f32"] + (["f16"] if dev.has_f16 else [])
    for label, nh, nkv, hd in (("1b", 32, 8, 64), ("8b", 32, 8, 128)):
        lanes = 8 if hd >= 128 else 4
        grid = [None, (16, 32, 1), (2, 32, lanes), (4, 32, lanes), (8, 32, lanes), (4, 16, lanes), (4, 32, 12 - lanes)]
        grid += [(8, 32, lanes, 2), (16, 32, lanes, 2), (16, 32, lanes, 4), (8, 16, lanes, 2)]
        for pos0, T in ((384, 128),) if QUICK else ((384, 128), (0, 512)):
            for dtype in dtypes[:1] if QUICK else dtypes:
                cache = PagedKVCache(dev, 1, nkv, hd, block_size=16, num_blocks=-(-(pos0 + T) // 16), dtype=dtype)
                cache.ensure(0, pos0 + T)
                step = dev.buffer_from(struct.pack("<2I", pos0, T))
                table = dev.buffer_from(
                    cache.table_bytes(0) + bytes(max(0, cache.table_buffer_size() - len(cache.table_bytes(0))))
                )
                q, o = dev.create_buffer(T * nh * hd * 4), dev.create_buffer(T * nh * hd * 4)
                k, v = dev.create_buffer(T * nkv * hd * 4), dev.create_buffer(T * nkv * hd * 4)
                for g in grid[:3] if QUICK else grid:
                    policy = KernelPolicy(prefill_attention=PrefillTiling(*g) if g else None)
                    try:
                        att = PagedAttention(dev, cache, nh, nkv, hd, T, policy=policy)
                    except ValueError as e:  # e.g. lanes without subgroups
                        emit(kind="prefill_attention", shape=label, tiling=g, error=str(e))
                        continue
                    b = att.bind(0, q, k, v, o, step, table)
                    us = time_dispatches(lambda rec: rec.dispatch(b.prefill, -(-T // att.tq), nkv), 5 if QUICK else 50)
                    emit(
                        kind="prefill_attention",
                        shape=label,
                        pos0=pos0,
                        T=T,
                        cache=dtype,
                        tiling=[att.tq, att.tk, att.plan.prefill.lanes, att.plan.prefill.rows],
                        default=g is None,
                        us=round(us * 1e6, 1),
                    )


def bench_matmul():
    """Prefill matmul tilings: GFLOP/s at a 128-token chunk."""
    import struct
    from webllm_py.linear import MatmulTiling

    T = 128
    params = dev.buffer_from(struct.pack("<2I", 0, T))
    for qtype in ("Q4_0", "Q4_K"):
        for n, k in ((256, 512),) if QUICK else ((4096, 4096), (14336, 4096), (2048, 8192)):
            w, nb = weight(qtype, n, k)
            xb, yb = dev.create_buffer(T * k * 4), dev.create_buffer(T * n * 4)
            for tl in (
                (32, 32, 32, 4, 4),
                (64, 64, 32, 8, 8),
                (64, 64, 16, 8, 8),
                (64, 64, 32, 4, 4),
                (128, 64, 16, 8, 8),
                (64, 128, 16, 8, 8),
                (128, 128, 16, 8, 8),
                (64, 64, 16, 4, 8),
            ):
                lin = Linear(dev, w, matmul=MatmulTiling(*tl))
                b = lin.bind(xb, yb, params)
                dt = time_dispatches(lambda rec: b.record(rec, T), 5 if QUICK else 20)
                emit(
                    kind="matmul",
                    qtype=qtype,
                    T=T,
                    N=n,
                    K=k,
                    tiling=tl,
                    us=round(dt * 1e6, 1),
                    gflops=round(2 * T * n * k / dt / 1e9, 1),
                )
            w.buffer.destroy()


# per-dispatch floor: a tiny matvec
w, nb = weight("Q4_0", 64, 64)
lin = Linear(dev, w, matvec=MatvecTiling(64, 4, True))
xb, yb = dev.create_buffer(64 * 4), dev.create_buffer(64 * 4)
b = lin.bind(xb, yb)
emit(kind="floor", us=round(1e6 * time_dispatches(lambda rec: b.record(rec, 1), REPS), 2))
rec = dev.recorder()  # the host's side: Python recording one dispatch (set pipeline, bind group, dispatch)
t = time.perf_counter()
for _ in range(REPS):
    b.record(rec, 1)
emit(kind="record_host", us=round(1e6 * (time.perf_counter() - t) / REPS, 2))
rec.submit()
sync()

if want("floor"):  # an elementwise kernel over 64 numbers: all floor
    import struct
    from webllm_py.ops import GLU

    bufs = [dev.create_buffer(256) for _ in range(3)]
    g = GLU(dev, 64, "silu").bind(*bufs, dev.buffer_from(struct.pack("<2I", 0, 1)))
    emit(kind="floor_glu", us=round(1e6 * time_dispatches(lambda rec: g.record(rec, 1), REPS), 2))
if want("prefill_attention"):
    bench_prefill_attention()
if want("matmul"):
    bench_matmul()
for qtype in ("Q4_0", "Q4_K") if want("matvec") else ():
    for n, k in SHAPES_8B + SHAPES_1B:
        w, nb = weight(qtype, n, k)
        xb, yb = dev.create_buffer(k * 4), dev.create_buffer(n * 4)
        variants = VARIANTS if (n, k) in SHAPES_8B[:4] or QUICK else [v for v in VARIANTS if v[0] == "generic" or v[3]]
        for name, wg, rows, sg in variants:
            lin = Linear(dev, w, matvec=MatvecTiling(wg, rows, True), subgroups=sg)
            if name == "generic":
                lin.q4 = False
            b = lin.bind(xb, yb)
            dt = time_dispatches(lambda rec: b.record(rec, 1), REPS)
            emit(
                kind="matvec",
                qtype=qtype,
                N=n,
                K=k,
                kernel=name,
                wg=wg,
                rows=rows,
                subgroups=sg,
                us=round(dt * 1e6, 2),
                gbps=round(nb / dt / 1e9, 1),
            )
        dev.raw.queue.submit([])
        w.buffer.destroy()


def sane_weight(qtype: str, n: int, k: int):
    """Random nibbles with finite f16 scales (random bytes make NaN/inf scales): for correctness."""
    bs = {"Q4_0": (32, 18, (0,)), "Q4_1": (32, 20, (0, 2)), "Q4_K": (256, 144, (0, 2))}[qtype]
    raw = rng.integers(0, 256, (n, k // bs[0], bs[1]), dtype=np.uint8)
    for p in bs[2]:
        raw[:, :, p : p + 2] = rng.uniform(0.001, 0.02, (n, k // bs[0], 1)).astype(np.float16).view(np.uint8)
    if qtype == "Q4_K":
        raw[:, :, 4:16] &= 0x3F  # keep 6-bit scales/mins small-ish but valid
    info = TensorInfo("w", (k, n), int(GGMLType[qtype]), 0, raw.nbytes)
    return upload_tensor(dev, BytesSource(raw.tobytes()), info), raw


from webllm_py.linear import Q4_TILING, StagedTiling, staged_tiling  # noqa: E402
from webllm_py.ops import GLU, QuantizeX, RMSNorm  # noqa: E402


def emits_like_quantize_x(produce, x, K: int, eq, ed, planes: int = 1, norm=None) -> bool:
    """Whether the (eq, ed) that `produce` (records the emitting dispatches) writes are, byte for byte,
    ops.QuantizeX's of x (K wide; norm: the ops.RMSNorm folded in), on this device's compiler. Without a norm
    only each block's (dx, dx sum q) is compared: the sums of x^2 after them are for a folded norm, and an
    emitter for a matvec without one leaves them unwritten."""
    quant = QuantizeX(dev, K, planes, norm=norm)
    qq, qd = quant.buffers()
    with dev.recorder() as rec:
        produce(rec)
        quant.bind(x, qq, qd).record(rec, 1)
    return all(
        asyncio.run(dev.read_buffer(a, 0, n)) == asyncio.run(dev.read_buffer(b, 0, n))
        for a, b, n in ((eq, qq, planes * K), (ed, qd, QuantizeX.xd_bytes(K) if norm else 8 * (K // 32)))
    )


if want("staged_check"):  # the staged kernel's output on this GPU against numpy (Q4_0) and matvec_q4
    for qtype in ("Q4_0", "Q4_1", "Q4_K"):
        for n, k in ((4096, 4096), (1024, 14336), (2048, 8192)):
            w, raw = sane_weight(qtype, n, k)
            x = rng.standard_normal(k).astype(np.float32)
            xb = dev.buffer_from(x.tobytes())
            ys = {}
            for name, t in (
                ("q4", Q4_TILING),
                ("q4s", staged_tiling(k)),
                ("q4s_prefetch", StagedTiling(256, 8, 1, True)),
            ):
                yb = dev.create_buffer(n * 4)
                b = Linear(dev, w, matvec=t).bind(xb, yb)
                with dev.recorder() as rec:
                    b.record(rec, 1)
                ys[name] = np.frombuffer(asyncio.run(dev.read_buffer(yb, 0, n * 4)), np.float32).astype(np.float64)
            out = dict(kind="staged_check", qtype=qtype, N=n, K=k)
            if qtype == "Q4_0":  # numpy: d * (nibble - 8), byte j of a block: elements j (low) and j + 16 (high)
                d = raw[:, :, 0:2].copy().view(np.float16).astype(np.float64)
                qs = raw[:, :, 2:]
                vals = np.concatenate([qs & 15, qs >> 4], axis=2).astype(np.float64) - 8
                ref = (d * vals).reshape(n, k) @ x.astype(np.float64)
                out["q4_vs_numpy"] = float(np.abs(ys["q4"] - ref).max() / np.abs(ref).max())
            else:
                ref = ys["q4"]
            for name in ("q4s", "q4s_prefetch"):
                out[name + "_rel_err"] = float(np.linalg.norm(ys[name] - ref) / np.linalg.norm(ref))
            emit(**out)
            w.buffer.destroy()

# the staged kernel (matvec_q4s: int8 x in workgroup memory) against matvec_q4 at its default
STAGED = [
    (256, 16, 1),
    (256, 8, 1),
    (256, 8, 2),
    (256, 16, 1, True),
    (256, 8, 1, True),
    (256, 8, 2, True),
    (128, 8, 1, True),
    (256, 4, 2, True),
    (512, 8, 1, True),
]
for qtype in ("Q4_0", "Q4_K", "Q6_K") if want("staged") else ():
    shapes = (
        [
            (4096, 4096),
            (14336, 4096),
            (4096, 14336),
            (128256, 4096),
            (2048, 2048),
            (8192, 2048),
            (2048, 8192),
            (512, 2048),
        ]
        if not QUICK
        else [(64, 512)]
    )
    for n, k in shapes:
        w, nb = weight(qtype, n, k)
        xb, yb = dev.create_buffer(k * 4), dev.create_buffer(n * 4)
        for t in [Q4_TILING] + [StagedTiling(*v) for v in (STAGED if not QUICK else STAGED[:2])]:
            lin = Linear(dev, w, matvec=t)
            b = lin.bind(xb, yb)
            dt = time_dispatches(lambda rec: b.record(rec, 1), REPS)
            emit(
                kind="staged",
                qtype=qtype,
                N=n,
                K=k,
                kernel="q4s" if lin.staged else "q4",
                tiling=[t.wg, getattr(t, "lanes", t.rows), t.rows, getattr(t, "prefetch", False)],
                us=round(dt * 1e6, 2),
                gbps=round(nb / dt / 1e9, 1),
            )
        dev.raw.queue.submit([])
        w.buffer.destroy()
    # a Llama layer's norm + Q/K/V and norm + gate/up: norm dispatch + matvec_q4 group, against the
    # staged group with the norm folded in
    for dim, kv, hidden in [(4096, 1024, 14336), (2048, 512, 8192)] if not QUICK else [(256, 64, 512)]:
        resid, h = dev.create_buffer(dim * 4), dev.create_buffer(dim * 4)
        step1 = dev.buffer_from(np.array([0, 1], np.uint32).tobytes())
        for label, ns in (("qkv", [dim, kv, kv]), ("gate_up", [hidden, hidden])):
            ws = [weight(qtype, n, dim) for n in ns]
            nbytes = sum(nb for _, nb in ws)
            ys = [dev.create_buffer(n * 4) for n in ns]
            for t in [Q4_TILING] + [StagedTiling(*v) for v in (STAGED[:6] if not QUICK else STAGED[:1])]:
                norm = RMSNorm(dev, dev.buffer_from(np.ones(dim, np.float32).tobytes()), dim, 1e-5).bind(
                    resid, h, step1
                )
                bounds = [Linear(dev, w, matvec=t).bind(h, y) for (w, _), y in zip(ws, ys)]
                glu = None
                if label == "gate_up":
                    act = dev.create_buffer(hidden * 4)
                    glu = ("silu", GLU(dev, hidden, "silu").bind(ys[0], ys[1], act, step1))
                g = MatvecGroup(bounds, glu=glu, norm=norm)
                dt = time_dispatches(lambda rec: (norm.record(rec, 1), g.record(rec, 1)), REPS)
                emit(
                    kind="staged_group",
                    qtype=qtype,
                    op=label,
                    dim=dim,
                    kernel="q4s" if bounds[0].linear.staged else "q4",
                    tiling=[t.wg, getattr(t, "lanes", t.rows), t.rows, getattr(t, "prefetch", False)],
                    norm_folded=bool(norm.absorbed),
                    us=round(dt * 1e6, 2),
                    gbps=round(nbytes / dt / 1e9, 1),
                )
            for w, _ in ws:
                w.buffer.destroy()

# fused groups vs separate dispatches (8B and 1B layer shapes)
for qtype in ("Q4_0", "Q4_K") if want("fused") else ():
    for dim, kv, hidden in [(4096, 1024, 14336), (2048, 512, 8192)] if not QUICK else [(256, 64, 512)]:
        for wg, rows, sg in [(64, 4, False), (64, 8, False), (128, 4, False)] if not QUICK else [(32, 2, False)]:
            tiling = MatvecTiling(wg, rows, True)
            xb = dev.create_buffer(dim * 4)
            for label, ns in (("qkv", [dim, kv, kv]), ("gate_up", [hidden, hidden])):
                ws = [weight(qtype, n, dim) for n in ns]
                ys = [dev.create_buffer(n * 4) for n in ns]
                bounds = [Linear(dev, w, matvec=tiling, subgroups=sg).bind(xb, y) for (w, _), y in zip(ws, ys)]
                glu = None
                if label == "gate_up":
                    from webllm_py.ops import GLU

                    step = dev.buffer_from(np.array([0, 1], np.uint32).tobytes())
                    act = dev.create_buffer(hidden * 4)
                    glu = ("silu", GLU(dev, hidden, "silu").bind(ys[0], ys[1], act, step))
                g = MatvecGroup(bounds, glu=glu)
                nbytes = sum(nb for _, nb in ws)
                sep = time_dispatches(
                    lambda rec: [bb.record(rec, 1) for bb in bounds] + ([glu[1].record(rec, 1)] if glu else []), REPS
                )
                fus = time_dispatches(lambda rec: g.record(rec, 1), REPS)
                # the RMSNorm before it: its own dispatch, or folded into the fused matvec
                resid = dev.create_buffer(dim * 4)
                step1 = dev.buffer_from(np.array([0, 1], np.uint32).tobytes())
                nb_ = RMSNorm(dev, dev.buffer_from(np.ones(dim, np.float32).tobytes()), dim, 1e-5).bind(
                    resid, xb, step1
                )
                with_norm = time_dispatches(lambda rec: (nb_.record(rec, 1), g.record(rec, 1)), REPS)
                gn = MatvecGroup(bounds, glu=glu, norm=nb_)
                folded = time_dispatches(lambda rec: gn.record(rec, 1), REPS)
                emit(
                    kind="fused",
                    qtype=qtype,
                    op=label,
                    dim=dim,
                    wg=wg,
                    rows=rows,
                    subgroups=sg,
                    separate_us=round(sep * 1e6, 2),
                    fused_us=round(fus * 1e6, 2),
                    fused_gbps=round(nbytes / fus / 1e9, 1),
                    norm_then_fused_us=round(with_norm * 1e6, 2),
                    norm_folded_us=round(folded * 1e6, 2),
                )
                for w, _ in ws:
                    w.buffer.destroy()

# the staged kernel's team reduction through workgroup memory + a barrier, or subgroupShuffleXor
# (subgroups=True): each layer op of 1B and 8B at its default tiling, the two forms alternated
# three times in this process (run-to-run drift on this machine is larger than the difference)
if want("staged_sg"):
    from webllm_py.linear import subgroup_min_size  # noqa: E402

    emit(kind="staged_sg_info", subgroup_min_size=subgroup_min_size(dev), has_subgroups=dev.has_subgroups)
    step1 = dev.buffer_from(np.array([0, 1], np.uint32).tobytes())
    for dim, kv, hidden, vocab in (
        [(2048, 512, 8192, 128256), (4096, 1024, 14336, 0)] if not QUICK else [(256, 64, 512, 1024)]
    ):
        resid, h = dev.create_buffer(dim * 4), dev.create_buffer(dim * 4)
        ops = [
            ("qkv", [dim, kv, kv], dim),
            ("wo", [dim], dim),
            ("gate_up", [hidden, hidden], dim),
            ("down", [dim], hidden),
        ]
        ops += [("lm_head", [vocab], dim)] if vocab else []
        for label, ns, k in ops:
            ws = [weight("Q4_0", n, k) for n in ns]
            nbytes = sum(nb for _, nb in ws)
            xb = dev.create_buffer(k * 4)
            ys = [dev.create_buffer(n * 4) for n in ns]
            recs = {}
            for sg in (False, True):
                bounds = [
                    Linear(dev, w, matvec=staged_tiling(k, N=n), subgroups=sg).bind(
                        xb if label in ("wo", "down", "lm_head") else h, y, accumulate=label in ("wo", "down")
                    )
                    for (w, _), y, n in zip(ws, ys, ns)
                ]
                if label in ("qkv", "gate_up"):
                    norm = RMSNorm(dev, dev.buffer_from(np.ones(dim, np.float32).tobytes()), dim, 1e-5).bind(
                        resid, h, step1
                    )
                    glu = (
                        ("silu", GLU(dev, hidden, "silu").bind(ys[0], ys[1], dev.create_buffer(hidden * 4), step1))
                        if label == "gate_up"
                        else None
                    )
                    g = MatvecGroup(bounds, glu=glu, norm=norm)
                    assert g.fused is not None and norm.absorbed
                    recs[sg] = (lambda g: lambda rec: g.record(rec, 1))(g)
                else:
                    recs[sg] = (lambda b: lambda rec: b.record(rec, 1))(bounds[0])
            best = time_alternating(recs)
            emit(
                kind="staged_sg",
                op=label,
                dim=dim,
                N=ns,
                K=k,
                us_barrier=round(best[False] * 1e6, 2),
                us_subgroups=round(best[True] * 1e6, 2),
                gbps_subgroups=round(nbytes / best[True] / 1e9, 1),
            )
            for w, _ in ws:
                w.buffer.destroy()

# Q8_0 and Q6_K: the generic matvec (matvec.wgsl.j2, what they ran before the staged kernel took
# them) against matvec_q4s at its default and a few tilings; each one's output on this GPU against
# numpy (over the same int8 rounding of x for the staged kernel: rel_err).
if want("staged_q8"):

    def q8_x(x):  # x as the staged kernel stages it: per 32, d = max|x| / 127, round(x / d) * d
        b = x.reshape(-1, 32)
        d = (np.abs(b).max(axis=1, keepdims=True) / np.float32(127)).astype(np.float32)
        return (np.round(b * np.where(d > 0, np.float32(1) / np.where(d > 0, d, 1), 0)) * d.astype(np.float64)).reshape(
            -1
        )

    Q8_STAGED = [(256, 8, 1), (256, 8, 1, True), (128, 8, 1), (256, 16, 1), (256, 4, 2)]
    for qtype, n, k in [
        (q, n, k)
        for q in ("Q8_0", "Q6_K")
        for n, k in (
            [(4096, 4096), (14336, 4096), (4096, 14336), (2048, 2048), (8192, 2048), (2048, 8192), (128256, 2048)]
            if not QUICK
            else [(64, 512)]
        )
    ]:
        bsz, tsz, f16at = (32, 34, 0) if qtype == "Q8_0" else (256, 210, 208)
        raw = rng.integers(0, 256, (n, k // bsz, tsz), dtype=np.uint8)
        raw[:, :, f16at : f16at + 2] = rng.uniform(0.001, 0.02, (n, k // bsz, 1)).astype(np.float16).view(np.uint8)
        info = TensorInfo("w", (k, n), int(GGMLType[qtype]), 0, raw.nbytes)
        w, nb = upload_tensor(dev, BytesSource(raw.tobytes()), info), raw.nbytes
        x = rng.standard_normal(k).astype(np.float32)
        xb, yb = dev.buffer_from(x.tobytes()), dev.create_buffer(n * 4)
        if n <= 16384:  # numpy reference: gguf-py's dequantize where installed, else Q8_0's d * int8
            try:
                import gguf

                deq = gguf.quants.dequantize(raw.reshape(n, -1), gguf.GGMLQuantizationType[qtype]).reshape(n, k)
            except ImportError:  # from ggml's block layouts
                if qtype == "Q8_0":
                    deq = (
                        raw[:, :, 0:2].copy().view(np.float16).astype(np.float32)
                        * raw[:, :, 2:].view(np.int8).astype(np.float32)
                    ).reshape(n, k)
                else:  # Q6_K: half h, quarter j, l < 32: ql[64h + 32(j % 2) + l] nibble j // 2, qh[128 + 32h + l] bits 2j
                    ql, qh = raw[:, :, :128].astype(np.int32), raw[:, :, 128:192].astype(np.int32)
                    sc = raw[:, :, 192:208].view(np.int8).astype(np.float32)
                    d = raw[:, :, 208:210].copy().view(np.float16).astype(np.float32)
                    q = np.empty((n, k // 256, 256), np.float32)
                    for h in range(2):
                        for j in range(4):
                            lo = (ql[:, :, 64 * h + 32 * (j % 2) : 64 * h + 32 * (j % 2) + 32] >> (4 * (j // 2))) & 15
                            hi = (qh[:, :, 32 * h : 32 * h + 32] >> (2 * j)) & 3
                            q[:, :, 128 * h + 32 * j : 128 * h + 32 * j + 32] = (lo | (hi << 4)) - 32
                    deq = (q * d * np.repeat(sc, 16, axis=2)).reshape(n, k)
            if deq is not None:
                ref_f32, ref_q8 = deq.astype(np.float64) @ x.astype(np.float64), deq.astype(np.float64) @ q8_x(x)
        tilings = [("generic", MatvecTiling()), ("default", staged_tiling(k, N=n, qtype=GGMLType[qtype]))] + [
            ("q4s", StagedTiling(*v)) for v in Q8_STAGED
        ]
        for name, t in tilings:
            lin = Linear(dev, w, matvec=t)
            b = lin.bind(xb, yb)
            out = dict(
                kind="staged_q8",
                qtype=qtype,
                N=n,
                K=k,
                kernel="q4s" if lin.staged else "generic",
                tiling=[t.wg, getattr(t, "lanes", t.rows), t.rows, getattr(t, "prefetch", False)],
            )
            if n <= 16384 and deq is not None:
                with dev.recorder() as rec:
                    b.record(rec, 1)
                y = np.frombuffer(asyncio.run(dev.read_buffer(yb, 0, n * 4)), np.float32).astype(np.float64)
                ref = ref_q8 if lin.staged else ref_f32
                out["rel_err"] = float(np.linalg.norm(y - ref) / np.linalg.norm(ref))
            dt = time_dispatches(lambda rec: b.record(rec, 1), REPS)
            emit(**out, us=round(dt * 1e6, 2), gbps=round(nb / dt / 1e9, 1))
        dev.raw.queue.submit([])
        w.buffer.destroy()

# x quantized once per token (ops.QuantizeX) for the staged matvec (StagedTiling.prestaged) against
# each workgroup quantizing all of x: each layer op of 1B and 8B (Q4_0) at its planner tiling, GPU us per
# op in a chain: "staged" (prestaged off), "q+pre" (the quantize dispatch and the prestaged matvec),
# "pre" (the prestaged matvec alone: x quantized beforehand, as an epilogue-fused producer would give),
# "quant" (the quantize dispatch alone). All alternated in this process, best of 3.
if want("prestaged"):
    from dataclasses import replace

    for size, dim, kv, hidden in (
        [("1b", 2048, 512, 8192), ("8b", 4096, 1024, 14336)] if not QUICK else [("quick", 256, 64, 512)]
    ):
        ops = [
            ("qkv", [dim, kv, kv], dim, True, None),
            ("wo", [dim], dim, False, None),
            ("gate_up", [hidden, hidden], dim, True, "silu"),
            ("down", [dim], hidden, False, None),
        ]
        for label, ns, k, norm, glu in ops:
            ws = [weight("Q4_0", n, k) for n in ns]
            nbytes = sum(nb for _, nb in ws)
            xb = dev.buffer_from(rng.standard_normal(k).astype(np.float32).tobytes())
            rms = RMSNorm(dev, dev.buffer_from(np.ones(k, np.float32).tobytes()), k, 1e-5) if norm else None
            ys = [dev.create_buffer(n * 4) for n in ns[: 1 if glu else len(ns)]]
            t0 = replace(staged_tiling(k, glu=bool(glu), N=ns[0], group=not glu and len(ns) > 1), prestaged=False)
            lins = [Linear(dev, w, matvec=t0) for w, _ in ws]
            groups = t0.groups(ns[0], k) if glu else sum(t0.groups(n, k) for n in ns)
            quant = QuantizeX(dev, k, t0.planes, norm=rms)
            xq, xd = quant.buffers()
            qb = quant.bind(xb, xq, xd)
            accumulate = not norm  # wo and down add into the residual
            bgs = {}
            for pre in (False, True):
                kern = lins[0].q4_kernel(list(ns), accumulate, glu=glu, norm=rms, tiling=replace(t0, prestaged=pre))
                xs = [xq, xd] if pre else [xb] + ([rms.weight] if norm else [])
                bgs[pre] = dev.bind(kern, [lin.weight.buffer for lin in lins] + xs + ys)
            recs = {
                "staged": lambda rec: rec.dispatch(bgs[False], groups),
                "quant": lambda rec: qb.record(rec, 1),
                "q+pre": lambda rec: (qb.record(rec, 1), rec.dispatch(bgs[True], groups)),
                "pre": lambda rec: rec.dispatch(bgs[True], groups),
            }
            best = time_alternating(recs)
            emit(
                kind="prestaged",
                size=size,
                op=label,
                N=ns,
                K=k,
                tiling=[t0.wg, t0.lanes_for(k), t0.rows, t0.prefetch],
                groups=groups,
                **{name + "_us": round(v * 1e6, 2) for name, v in best.items()},
                staged_gbps=round(nbytes / best["staged"] / 1e9, 1),
            )
            for w, _ in ws:
                w.buffer.destroy()

# The prestaged matvec (x quantized beforehand, as the 8B model reads it) at several tilings, for the ops whose
# workgroup count is low at 8B (qkv at 256,8,1: 192 workgroups of 32 rows; wo: 128 on 132 SMs): GPU us of the
# "pre" form per tiling (WG,LANES,ROWS[,PREFETCH]), alternated in this process, best of 3. wo's tilings keep 32
# rows a workgroup (its emit_next needs them: StagedTiling.emit_refusal); qkv's are free. Its H100 run made
# STAGED_TABLE's Q/K/V row (128,8,1: docs/benchmarks.md, "Q/K/V at 16 rows a workgroup").
if want("prestaged_tiles"):
    from dataclasses import replace

    from webllm_py.planner import Adapter

    AD = Adapter.of(dev)

    TILES = {
        "qkv": [
            (256, 8, 1, 0),
            (128, 8, 1, 0),
            (64, 8, 1, 0),
            (256, 16, 1, 0),
            (128, 16, 1, 0),
            (128, 4, 1, 0),
            (256, 8, 1, 1),
            (128, 8, 1, 1),
        ],
        "wo": [(256, 8, 1, 0), (128, 4, 1, 0), (256, 16, 2, 0), (256, 8, 1, 1), (512, 16, 1, 0)],
    }
    for size, dim, kv in [("1b", 2048, 512), ("8b", 4096, 1024)] if not QUICK else [("quick", 512, 128)]:
        for label, ns, norm in (("qkv", [dim, kv, kv], True), ("wo", [dim], False)):
            k = dim
            ws = [weight("Q4_0", n, k) for n in ns]
            nbytes = sum(nb for _, nb in ws)
            xb = dev.buffer_from(rng.standard_normal(k).astype(np.float32).tobytes())
            rms = RMSNorm(dev, dev.buffer_from(np.ones(k, np.float32).tobytes()), k, 1e-5) if norm else None
            ys = [dev.create_buffer(n * 4) for n in ns]
            t0 = replace(staged_tiling(k, N=ns[0]), prestaged=True)
            lins = [Linear(dev, w, matvec=t0) for w, _ in ws]
            quant = QuantizeX(dev, k, t0.planes, norm=rms)
            xq, xd = quant.buffers()
            with dev.recorder() as rec:
                quant.bind(xb, xq, xd).record(rec, 1)
            recs, groups = {}, {}
            for wg, lanes, rows, pf in TILES[label]:
                t = replace(t0, wg=wg, lanes=lanes, rows=rows, prefetch=bool(pf))
                name = f"{wg},{t.lanes_for(k)},{rows},{pf}"  # lanes past K / 256 are clamped (lanes_for)
                if name in recs or not (AD.fits(t.shared_bytes(k)) and wg <= AD.invocations):
                    continue
                try:
                    kern = lins[0].q4_kernel(list(ns), not norm, glu=None, norm=rms, tiling=t)
                except Exception as e:  # a tiling the kernel refuses: say so, go on
                    emit(kind="prestaged_tiles", size=size, op=label, tiling=name, error=str(e)[:200])
                    continue
                bg = dev.bind(kern, [lin.weight.buffer for lin in lins] + [xq, xd] + ys)
                g = sum(t.groups(n, k) for n in ns)
                groups[name] = g
                recs[name] = lambda rec, bg=bg, g=g: rec.dispatch(bg, g)
            best = time_alternating(recs)
            for name, v in best.items():
                emit(
                    kind="prestaged_tiles",
                    size=size,
                    op=label,
                    N=ns,
                    K=k,
                    tiling=name,
                    groups=groups[name],
                    us=round(v * 1e6, 2),
                    gbps=round(nbytes / v / 1e9, 1),
                )
            for w, _ in ws:
                w.buffer.destroy()

# The residual's producer writing the next matvec's x in its epilogue (matvec_q4s's emit_next) against
# today's chain, at the 1B and 8B (Q4_0) shapes and planner tilings, GPU us per pair in a chain: w_down
# (y += ...) -> the next layer's qkv (attn_norm folded in) and wo -> gate_up (ffn_norm folded in).
# "staged": both staged (the consumer quantizes x in each workgroup); "emit": the producer with emit_next
# -> the prestaged consumer (no extra dispatch); "q+pre": the producer, ops.QuantizeX, the prestaged
# consumer (KernelPolicy.prestage today); "prod"/"prod_emit": the producer alone without / with the
# epilogue (its cost). All alternated in this process, best of 3.
if want("epilogue"):
    from dataclasses import replace

    for size, dim, kv, hidden in (
        [("1b", 2048, 512, 8192), ("8b", 4096, 1024, 14336)] if not QUICK else [("quick", 512, 256, 1024)]
    ):
        for label, (pk, cns, glu) in (
            ("down>qkv", (hidden, [dim, kv, kv], None)),
            ("wo>gate_up", (dim, [hidden, hidden], "silu")),
        ):
            pt = staged_tiling(pk, N=dim)
            if QUICK:  # small K: fewer lanes, so 32 rows a workgroup need a smaller one
                pt = replace(pt, wg=32 * pt.lanes_for(pk), rows=1)
            why = pt.emit_refusal(pk, [dim], True, None)
            if why:
                emit(kind="epilogue", size=size, op=label, refused=why)
                continue
            ct = replace(staged_tiling(dim, glu=bool(glu), N=cns[0], group=not glu and len(cns) > 1), prestaged=False)
            pw, _ = sane_weight("Q4_0", dim, pk)  # a finite residual: the bytes check below
            cws = [weight("Q4_0", n, dim) for n in cns]
            prod = Linear(dev, pw, matvec=pt)
            lins = [Linear(dev, w, matvec=ct) for w, _ in cws]
            px = dev.buffer_from(rng.standard_normal(pk).astype(np.float32).tobytes())
            resid = dev.buffer_from(rng.standard_normal(dim).astype(np.float32).tobytes())
            rms = RMSNorm(dev, dev.buffer_from(np.ones(dim, np.float32).tobytes()), dim, 1e-5)
            ys = [dev.create_buffer(n * 4) for n in cns[: 1 if glu else len(cns)]]
            quant = QuantizeX(dev, dim, ct.planes, norm=rms)
            xq, xd = quant.buffers()
            qb = quant.bind(resid, xq, xd)
            pbg = {
                e: dev.bind(
                    prod.q4_kernel([dim], True, tiling=pt, emit_next=rms if e else None, emit_planes=ct.planes),
                    [pw.buffer, px, resid] + ([rms.weight, xq, xd] if e else []),
                )
                for e in (False, True)
            }
            cbg = {
                pre: dev.bind(
                    lins[0].q4_kernel(list(cns), False, glu=glu, norm=rms, tiling=replace(ct, prestaged=pre)),
                    [lin.weight.buffer for lin in lins] + ([xq, xd] if pre else [resid, rms.weight]) + ys,
                )
                for pre in (False, True)
            }
            pg = pt.groups(dim, pk)
            cg = ct.groups(cns[0], dim) if glu else sum(ct.groups(n, dim) for n in cns)
            recs = {
                "staged": lambda rec: (rec.dispatch(pbg[False], pg), rec.dispatch(cbg[False], cg)),
                "emit": lambda rec: (rec.dispatch(pbg[True], pg), rec.dispatch(cbg[True], cg)),
                "q+pre": lambda rec: (rec.dispatch(pbg[False], pg), qb.record(rec, 1), rec.dispatch(cbg[True], cg)),
                "prod": lambda rec: rec.dispatch(pbg[False], pg),
                "prod_emit": lambda rec: rec.dispatch(pbg[True], pg),
            }
            # on this device's compiler too: the epilogue's blocks are QuantizeX's over the same new residual
            same = emits_like_quantize_x(recs["prod_emit"], resid, dim, xq, xd, ct.planes, rms)
            best = time_alternating(recs)
            emit(
                kind="epilogue",
                emit_matches_quantize_x=same,
                size=size,
                op=label,
                producer=[dim, pk, [pt.wg, pt.lanes_for(pk), pt.rows, pt.prefetch]],
                consumer=[cns, dim, [ct.wg, ct.lanes_for(dim), ct.rows, ct.prefetch]],
                **{name + "_us": round(v * 1e6, 2) for name, v in best.items()},
            )
            for w in [pw] + [w for w, _ in cws]:
                w.buffer.destroy()

# Attention writing wo's quantized x (BoundAttention.emit_into, wo reading it prestaged: BoundLinear.take_x)
# against today's chain, 8B layout (32 heads, 8 kv heads, head_dim 128; wo Q4_0 4096 x 4096 with its emit_next
# into the gate/up norm, as at 8B), one decode token at position 640, GPU us alternated, best of 3:
# "off": attention (step [+ combine]) -> wo staged; "on": attention emitting -> wo prestaged; pieces:
# "att_off"/"att_on" (attention alone) and "wo"/"wo_pre" (wo alone, staged / prestaged). form: "combine"
# (attention_step + attention_combine, as on Dawn) or "merge" (the step merges its slices: native).
# emit_matches_quantize_x: the emitted bytes equal ops.QuantizeX's over the f32 output, on this compiler.
if want("attn_emit"):
    import struct

    from webllm_py.attention import PagedAttention
    from webllm_py.kv_cache import PagedKVCache
    from webllm_py.planner import KernelPolicy

    nh, nkv, hd, dim, pos = (32, 8, 128, 4096, 640) if not QUICK else (8, 2, 64, 512, 100)
    K = nh * hd
    for form in ("combine", "merge"):
        cache = PagedKVCache(dev, 1, nkv, hd, block_size=16, num_blocks=pos // 16 + 2)
        cache.ensure(0, pos + 1)
        pol = KernelPolicy(step_merge=form == "merge")
        att = PagedAttention(dev, cache, nh, nkv, hd, 1, fused=True, policy=pol)
        qkv = [dev.buffer_from(rng.standard_normal(n).astype(np.float32).tobytes()) for n in (K, nkv * hd, nkv * hd)]
        o = dev.create_buffer(4 * K)
        step = dev.buffer_from(struct.pack("<2I", pos, 1))
        table = dev.buffer_from(cache.table_bytes(0))
        ww, _ = sane_weight("Q4_0", dim, K)
        resid = dev.buffer_from(rng.standard_normal(dim).astype(np.float32).tobytes())
        rms = RMSNorm(dev, dev.buffer_from(np.ones(dim, np.float32).tobytes()), dim, 1e-5)
        wlin = Linear(dev, ww, matvec=staged_tiling(K, N=dim))  # (the planner's on GPUs; lavapipe: --quick)
        forms = {}
        for name in ("off", "on"):
            a = att.bind(0, *qkv, o, step, table)
            w = wlin.bind(o, resid, accumulate=True)
            w.emit_into(rms, 1)
            if name != "off":
                bufs = a.emit_into(w.taken_planes() or 1, write_out=True)
                if bufs is None:
                    emit(kind="attn_emit", form=form, refused=att.emit_refusal())
                    break
                w.take_x(*bufs)
            forms[name] = (a, w)
        if "on" not in forms:
            continue
        recs = {}
        for name, (a, w) in forms.items():
            recs[name] = lambda rec, a=a, w=w: (a.record(rec, 1), w.record(rec, 1))
            recs["att_" + name] = lambda rec, a=a: a.record(rec, 1)
        recs["wo"] = lambda rec, w=forms["off"][1]: w.record(rec, 1)
        recs["wo_pre"] = lambda rec, w=forms["on"][1]: w.record(rec, 1)
        same = {
            name: emits_like_quantize_x(lambda rec, a=a: a.record(rec, 1), o, K, *a.emits)
            for name, (a, w) in forms.items()
            if name != "off"
        }
        best = time_alternating(recs)
        emit(
            kind="attn_emit",
            form=form,
            pos=pos,
            emit_matches_quantize_x=same,
            wo_tiling=str(wlin.matvec_tiling),
            **{name + "_us": round(v * 1e6, 2) for name, v in best.items()},
        )
        ww.buffer.destroy()

if want("i8"):  # matmul_i8 (packed-dot prefill) tilings at the models' 512-token shapes, alternated
    import struct
    from dataclasses import replace

    from webllm_py.linear import MatmulI8Tiling
    from webllm_py.planner import Adapter, KernelPolicy, i8_tiling

    T = 128 if QUICK else 512
    params = dev.buffer_from(struct.pack("<2I", 0, T))
    I8_ADAPTER = Adapter.of(dev)
    # the planner's tile (planner.i8_tiling for this adapter, weight and plane count) against the first tiles
    # (64 x 64, 4 x 4 a thread; 64 x 32, 4 x 2 under 4096 rows; "first+pf": with register prefetch) and taller /
    # wider tiles with one block a K step (what fits WebGPU's 16 KiB of workgroup memory)
    I8_FORMS = {
        "planner": "planner",
        "first": None,
        "first+pf": "pf",
        "64x64 4x4 kb1 pf": MatmulI8Tiling(tm=64, tn=64, rm=4, rn=4, kb=1, pf=True),
        "128x64 8x4 kb1": MatmulI8Tiling(tm=128, tn=64, rm=8, rn=4, kb=1),
        "128x64 8x4 kb1 pf": MatmulI8Tiling(tm=128, tn=64, rm=8, rn=4, kb=1, pf=True),
        "64x128 4x8 kb1 pf": MatmulI8Tiling(tm=64, tn=128, rm=4, rn=8, kb=1, pf=True),
        "128x128 8x8 kb1 pf": MatmulI8Tiling(tm=128, tn=128, rm=8, rn=8, kb=1, pf=True),
        "128x32 8x2 kb1 pf": MatmulI8Tiling(tm=128, tn=32, rm=8, rn=2, kb=1, pf=True),
        # what one plane of x leaves room for in 16 KiB: two blocks a K step on the taller / wider tiles
        "128x64 8x4 kb2 pf": MatmulI8Tiling(tm=128, tn=64, rm=8, rn=4, kb=2, pf=True),
        "64x128 4x8 kb2 pf": MatmulI8Tiling(tm=64, tn=128, rm=4, rn=8, kb=2, pf=True),
    }
    I8_ONLY = [a.split("=", 1)[1] for a in sys.argv if a.startswith("--i8-forms=")]
    if I8_ONLY:
        I8_FORMS = {k: v for k, v in I8_FORMS.items() if k in I8_ONLY[0].split(";")}
    # --i8-planes=1: every form with one int8 plane of x (the prefill's at widths >= 1024: prefill_planes_auto)
    I8_PLANES = int(next((a.split("=", 1)[1] for a in sys.argv if a.startswith("--i8-planes=")), "2"))
    I8_POLICY = KernelPolicy(prefill="i8" if I8_PLANES == 1 else "i8x2")  # the planner's form at that plane count
    shapes = [(256, 512)] if QUICK else [(n, k) for n, k in SHAPES_8B + SHAPES_1B if n != 128256 and n >= 2048]
    I8_TYPES = next((a.split("=", 1)[1].split(",") for a in sys.argv if a.startswith("--i8-qtypes=")), None)
    for qtype in I8_TYPES or (("Q4_0",) if QUICK else ("Q4_0", "Q4_K")):
        for n, k in shapes:
            w, nb = weight(qtype, n, k)
            xb, yb = dev.create_buffer(T * k * 4), dev.create_buffer(T * n * 4)
            recs = {}
            for name, tl in I8_FORMS.items():
                if tl == "planner":
                    tl = i8_tiling(I8_ADAPTER, GGMLType[qtype], k, n, I8_POLICY)
                    if tl is None:
                        emit(kind="i8", qtype=qtype, N=n, K=k, form=name, error="the planner keeps the f32 matmul")
                        continue
                    name = f"planner ({tl.tm}x{tl.tn} {tl.rm}x{tl.rn} kb{tl.kb}{' pf' if tl.pf else ''})"
                else:
                    first = MatmulI8Tiling(tm=64, tn=64 if n >= 4096 else 32, rm=4, rn=4 if n >= 4096 else 2)
                    tl = first if tl is None else replace(first, pf=True) if tl == "pf" else tl
                tl = replace(tl, planes=I8_PLANES)
                try:
                    b = Linear(dev, w, matmul=tl).bind(xb, yb, params)
                    with dev.recorder() as rec:
                        b.record(rec, T)  # quantizes x, warms the pipeline
                    sync()
                except Exception as e:  # a tile this adapter cannot run: say so, go on
                    emit(kind="i8", qtype=qtype, N=n, K=k, form=name, error=str(e)[:200])
                    continue
                recs[name] = lambda rec, b=b: b.record(rec, T, x_passed=True)
            reps = 2 if QUICK else max(5, int(1e9 / (T * n * k)))  # ~0.05 s a pass at ~25 TOPS
            for name, dt in time_alternating(recs, reps).items():
                emit(
                    kind="i8",
                    qtype=qtype,
                    T=T,
                    N=n,
                    K=k,
                    form=name,
                    planes=I8_PLANES,
                    us=round(dt * 1e6, 1),
                    tops=round(2 * T * n * k / dt / 1e12, 2),
                )
            w.buffer.destroy()

# The fused gate/up writing w_down's quantized x in its epilogue (KernelPolicy.glu_emit: MatvecGroup.emit_into,
# w_down reading it prestaged: BoundLinear.take_x, linked by models/layer.link_emits) against today's chain, at
# the 1B and 8B (Q4_0) shapes, built as the model builds them with KernelPolicy(prestage=True) (gate/up reading
# x prestaged, as wo's emit_next gives it; w_down with its emit_next into the next norm, as at 8B), GPU us
# alternated, best of 3: "off": gate/up (the planner's glu tiling: 16 rows a workgroup at 8B) -> w_down staging
# its own x; "on": gate/up emitting (plan_fused's 32-row tiling) -> w_down prestaged; "on <tiling>": the
# same with that glu tiling (a "glu" override of 32 rows); pieces "gu_<form>" (gate/up alone) and "down_off" /
# "down_on" (w_down alone, staged / prestaged). emit_matches_quantize_x: the emitted bytes equal ops.QuantizeX's
# over the f32 GLU output, on this compiler. --quick: lavapipe told it is a GPU (the planner's GPU kernels).
if want("glu_emit"):
    import struct
    from dataclasses import replace

    from webllm_py.models.layer import link_emits
    from webllm_py.planner import KernelPolicy

    info0 = dev.info
    if QUICK:
        dev.info = replace(dev.info, is_fallback=False)
    GLU_FORMS = {"off": None, "on": (), "on 128,4,1": (128, 4, 1), "on 128,8,2": (128, 8, 2)}
    step = dev.buffer_from(struct.pack("<2I", 0, 1))
    for size, dim, hidden in [("1b", 2048, 8192), ("8b", 4096, 14336)] if not QUICK else [("quick", 512, 1024)]:
        wg_, _ = sane_weight("Q4_0", hidden, dim)
        wu_, _ = sane_weight("Q4_0", hidden, dim)
        wd_, _ = sane_weight("Q4_0", dim, hidden)
        x = dev.buffer_from(rng.standard_normal(dim).astype(np.float32).tobytes())
        resid = dev.buffer_from(rng.standard_normal(dim).astype(np.float32).tobytes())
        ones = dev.buffer_from(np.ones(dim, np.float32).tobytes())
        h, yg, yu, out = (dev.create_buffer(4 * n) for n in (dim, hidden, hidden, hidden))
        forms, tilings = {}, {}
        for name, glu_t in GLU_FORMS.items():
            pol = KernelPolicy(
                prestage=True,
                glu_emit=glu_t is not None,
                staged_tilings=(("glu", StagedTiling(*glu_t)),) if glu_t else (),
            )
            norm = RMSNorm(dev, ones, dim, 1e-5).bind(x, h, step)
            gate = Linear(dev, wg_, policy=pol).bind(h, yg)
            up = Linear(dev, wu_, policy=pol).bind(h, yu)
            group = MatvecGroup([gate, up], glu=("silu", GLU(dev, hidden, "silu").bind(yg, yu, out, step)), norm=norm)
            if group.x_planes() is None:
                emit(kind="glu_emit", size=size, form=name, refused="gate/up reads no prestaged x")
                continue
            pre = group.runs[0][2]  # its QuantizeX: run once here, as wo's emit_next would have written x
            with dev.recorder() as rec:
                pre.record(rec, 1)
            group.take_x(*pre.writes)
            down = Linear(dev, wd_, policy=pol).bind(out, resid, accumulate=True)
            down.emit_into(RMSNorm(dev, ones, dim, 1e-5), 1)  # (the next layer's Q/K/V x, as at 8B)
            linked = link_emits([group, down], glu=glu_t is not None)
            if glu_t is not None and not linked:
                emit(kind="glu_emit", size=size, form=name, refused=str(group._specs[0][2]))
                continue
            forms[name] = (group, down)
            t = group._specs[0][2]
            tilings[name] = [t.wg, t.lanes_for(dim), t.rows, t.prefetch]
        recs = {}
        for name, (group, down) in forms.items():
            recs[name] = lambda rec, g=group, d=down: (g.record(rec, 1), d.record(rec, 1))
            recs["gu_" + name] = lambda rec, g=group: g.record(rec, 1)
        if "off" in forms and "on" in forms:
            recs["down_off"] = lambda rec, d=forms["off"][1]: d.record(rec, 1)
            recs["down_on"] = lambda rec, d=forms["on"][1]: d.record(rec, 1)
        same = {
            name: emits_like_quantize_x(lambda rec, g=group: g.record(rec, 1), out, hidden, *group.emits[1:])
            for name, (group, down) in forms.items()
            if name != "off"
        }
        best = time_alternating(recs)
        emit(
            kind="glu_emit",
            size=size,
            dim=dim,
            hidden=hidden,
            glu_tilings=tilings,
            down_tiling=str(forms["off"][1].linear.matvec_tiling) if "off" in forms else None,
            emit_matches_quantize_x=same,
            **{name.replace(" ", "_").replace(",", "x") + "_us": round(v * 1e6, 2) for name, v in best.items()},
        )
        for w in (wg_, wu_, wd_):
            w.buffer.destroy()
    dev.info = info0
