"""Prefill matmul speed on Dawn: matmul_sgmat (int8 subgroup matrices) and matmul_sgmat_f16 (f16 subgroup
matrices over f16 weight tiles) tilings against matmul_i8 (packed dot products), same device, same weights, in
one Dawn host with allow_unsafe_apis and vulkan_enable_f16_on_nvidia (NVIDIA's f16 configs and shader-f16).
Prints one JSON line per (shape, kernel): TOPS = 2 T N K / time of one matmul dispatch (matmul_i8's and
matmul_sgmat's quantization of x and matmul_sgmat_f16's scales of x, shared by a layer's linears, not counted).

    python scripts/sgmat_bench.py [--shapes 512x4096x4096,512x14336x4096] [--reps 30] [--kernels i8,sgmat,f16]
        [--variants "128x128,pf"]
    python scripts/sgmat_bench.py --kernels split   # split-K: the planner's tile unsplit, 2-4 slices of 3 tiles
    python scripts/sgmat_bench.py --kernels sgc     # the planner's matmul_sgmat_f16: matrix loads at constant offsets
    python scripts/sgmat_bench.py --kernels probe   # the planner's matmul_sgmat_f16: its multiplies alone, its staging
        # alone (the template's measurement probes; their y is not the product)
    python scripts/sgmat_bench.py --kernels f16-big # the planner's f16 tiles, 128x128 at kb 1 and 4, two 256x128s
    python scripts/sgmat_bench.py --kernels occ --shapes 512x4224x4096,512x8448x4096  # 128x128 tiles with fewer
        # registers held (no pf, no sgc): 132 and 264 workgroups, one or two waves where one fits an SM
    python scripts/sgmat_bench.py --kernels copy    # matmul_sgmat_f16 at the planner's tile with copy-only
        # staging (wsrc=f16: W as f16 rows, xsrc=f16: x as f16(x / s_t)) against today's, rounds alternating,
        # and the dequant_f16 pre-pass alone (GB/s of f16 rows written + quant bytes read)

Weights are Q4_0 blocks (scales set to a small f16, nibbles random); the GPU's time is the wall time of a
submitted pass of `reps` dispatches, read back once (one submit + readback is ~0.06 ms on Dawn)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from webllm_py.dawn import TOGGLES, DawnHost  # noqa: E402

_SETUP = """
import os, struct, time
from webllm_py.gpu.browser import BrowserDevice
from webllm_py.formats.quants import GGMLType, TensorInfo
from webllm_py.formats.source import BytesSource
from webllm_py.linear import Linear
from webllm_py.planner import Adapter, KernelPolicy, MatmulSgmatF16Tiling, MatmulSgmatTiling, MatmulI8Tiling, sgmat_fits
from webllm_py.weights import upload_tensor
dev = await BrowserDevice.create()
blocks = b"".join(b"\\x00\\x20" + os.urandom(16) for _ in range(4096))  # f16 0x2000 ~ 1.5e-5
xs = struct.pack("<4096f", *((i % 97 - 48) / 16 for i in range(4096)))  # ordinary floats, in f16's range
{"i8": Adapter.of(dev).subgroup_matrix, "f16": Adapter.of(dev).f16_subgroup_matrix}
"""

_TIME = """
T, N, K, reps = {T}, {N}, {K}, {reps}
nbytes = N * K // 32 * 18
raw = (blocks * (nbytes // len(blocks) + 1))[:nbytes]
w = upload_tensor(dev, BytesSource(raw), TensorInfo("w", (K, N), int(GGMLType.Q4_0), 0, nbytes))
x = dev.buffer_from((xs * (T * K // 4096 + 1))[: 4 * T * K])
y = dev.create_buffer(4 * T * N)
params = dev.buffer_from(struct.pack("<II", 0, T))
out = []
adapter = Adapter.of(dev)
for label, tiling, policy in {variants}:
    if isinstance(tiling, (MatmulSgmatTiling, MatmulSgmatF16Tiling)) and not sgmat_fits(adapter, tiling):
        # said before the pipeline is made: Dawn's own error ("[Invalid ComputePipeline] is invalid due to a
        # previous error") does not name the limit
        out.append({{"shape": f"{{T}}x{{N}}x{{K}}", "label": label, "error": f"does not fit this adapter: "
                    f"{{tiling.shared_bytes()}} bytes of workgroup memory ({{adapter.workgroup_storage}} offered), "
                    f"{{tiling.threads}} threads ({{adapter.invocations}} offered)"}})
        continue
    lin = Linear(dev, w, matmul=tiling, policy=KernelPolicy(**policy))
    b = lin.bind(x, y, params)
    try:
        with dev.recorder() as rec:
            b.record(rec, T)  # quantize x, warm the pipeline
        await dev.read_buffer(y, 0, 4)
    except Exception as e:  # a tiling this adapter cannot run: say so, go on
        out.append({{"shape": f"{{T}}x{{N}}x{{K}}", "label": label, "error": str(e)[:300]}})
        continue
    async def per_dispatch(n):
        with dev.recorder() as rec:
            for _ in range(n):
                b.record(rec, T, x_passed=True)  # the matmul (and splitk_sum where split), not x's pass
        t0 = time.perf_counter()
        await dev.read_buffer(y, 0, 4)  # the recorder submitted on exit; this waits for the GPU
        return (time.perf_counter() - t0) / n
    # passes of at least `reps` dispatches and ~50 ms: short passes after the idle of a pipeline's compile
    # ran at a fraction of the speed (the first sweep's small shapes, docs/benchmarks.md)
    n = max(reps, int(0.05 / await per_dispatch(reps)) + 1)
    best = min([await per_dispatch(n) for _ in range(3)])
    out.append({{"shape": f"{{T}}x{{N}}x{{K}}", "kernel": lin.matmul_plan.template, "label": label,
                "tiling": repr(lin.matmul_tiling), "ms": round(best * 1e3, 4),
                "tops": round(2 * T * N * K / best / 1e12, 2)}})
out
"""

# --kernels copy: matmul_sgmat_f16 rendered directly (not through a Linear, which plans xsrc by the tiling's x16 and
# never wsrc "f16"), the planner's tile for the shape, each variant's best of `rounds` rounds, rounds alternating
_COPY = """
from webllm_py.planner import sgmat_f16_tiling
T, N, K, reps, rounds = {T}, {N}, {K}, {reps}, {rounds}
nbytes = N * K // 32 * 18
raw = (blocks * (nbytes // len(blocks) + 1))[:nbytes]
wq = dev.buffer_from(raw + bytes(4))  # the spare word weights carry
w16 = dev.create_buffer(2 * N * K)
x32 = dev.buffer_from((xs * (T * K // 4096 + 1))[: 4 * T * K])
xs16 = struct.pack("<4096e", *((i % 97 - 48) / 16 for i in range(4096)))  # the same values as x32's, in f16
x16 = dev.buffer_from((xs16 * (T * K // 4096 + 1))[: 2 * T * K])
sc = dev.buffer_from(struct.pack("<2f", 1.0, 1.0) * T)
y = dev.create_buffer(4 * T * N)
params = dev.buffer_from(struct.pack("<II", 0, T))
t = sgmat_f16_tiling(Adapter.of(dev), GGMLType.Q4_0, K, N)
pre = dev.kernel("dequant_f16", qtype="Q4_0", K=K, row_bytes=K // 32 * 18, wg=256)
groups = -(-N * K // 32 // 256)
pre_grid = (groups, 1) if groups <= 65535 else (-(-groups // 8), 8)  # the kernel skips threads past N K / 32
jobs = [("dequant_f16 pre-pass", pre, [wq, w16], pre_grid)]
for label, opts in {variants}:
    k = dev.kernel("matmul_sgmat_f16", sg_m=t.sg_m, sg_n=t.sg_n, ti=t.ti, tj=t.tj, kb=t.kb, db=t.db, pf=t.pf,
                   qtype="Q4_0", K=K, row_bytes=K // 32 * 18, tokens_at=1, has_bias=False, accumulate=False, **opts)
    wsrc, xsrc = opts.get("wsrc", "q"), opts.get("xsrc", "f32")
    jobs.append((label, k, [w16 if wsrc == "f16" else wq, x32 if xsrc == "f32" else x16, sc, y, params],
                 t.groups(N, T)[:2]))
await dev.kernels_ready()
bound = [(label, dev.bind(k, bufs), grid) for label, k, bufs, grid in jobs]
async def per_dispatch(bg, grid, n):
    with dev.recorder() as rec:
        for _ in range(n):
            rec.dispatch(bg, *grid)
    t0 = time.perf_counter()
    await dev.read_buffer(y, 0, 4)
    return (time.perf_counter() - t0) / n
counts = []
for label, bg, grid in bound:
    await per_dispatch(bg, grid, 2)  # warm
    counts.append(max(reps, int(0.05 / await per_dispatch(bg, grid, reps)) + 1))
best = [1e9] * len(bound)
for _ in range(rounds):
    for i, (label, bg, grid) in enumerate(bound):
        best[i] = min(best[i], await per_dispatch(bg, grid, counts[i]))
# correctness on the device: every variant's y against today's (the same f16 operands: x's values are exact in
# f16, s_t = 1, and the pre-pass's rows are the staging's values), max |difference| over max |y|
ys = []
for label, bg, grid in bound[1:]:
    with dev.recorder() as rec:
        rec.dispatch(bound[0][1], *bound[0][2])  # the pre-pass first (w16 for wsrc=f16)
        rec.dispatch(bg, *grid)
    ys.append(memoryview(await dev.read_buffer(y, 0, 4 * T * N)).cast("f"))
ref = ys[0]
scale_y = max(abs(v) for v in ref[:: max(1, len(ref) // 65536)]) or 1.0
diff = [0.0] + [max(abs(a - b) for a, b in zip(ref[::61], v[::61])) / scale_y for v in ys[1:]]
out = []
for (label, bg, grid), b, d in zip(bound, best, [None] + diff):
    row = {{"shape": f"{{T}}x{{N}}x{{K}}", "label": label, "tiling": repr(t), "us": round(b * 1e6, 2)}}
    if label.startswith("dequant"):
        row["GB/s"] = round((2 * N * K + nbytes) / b / 1e9, 1)
    else:
        row["tops"] = round(2 * T * N * K / b / 1e12, 2)
        row["vs first"] = round(best[1] / b, 3)
        row["max |y - first's| / max |y| (every 61st)"] = d
    out.append(row)
out
"""
COPY_VARIANTS = [
    ("q, x f32 (before x16)", {"wsrc": "q", "xsrc": "f32"}),
    ("wsrc=f16", {"wsrc": "f16", "xsrc": "f32"}),
    ("xsrc=f16", {"wsrc": "q", "xsrc": "f16"}),
    ("wsrc=f16 xsrc=f16", {"wsrc": "f16", "xsrc": "f16"}),
]
# --kernels sgc: the planner's kernel (x16) with its multiplies in a switch over the subgroup (sgc: every matrix
# load at a constant offset) against without; the same products, so the same y (checked as --kernels copy does)
SGC_VARIANTS = [
    ("x16", {"xsrc": "f16"}),
    ("x16, sgc", {"xsrc": "f16", "sgc": True}),
]
# --kernels probe: the planner's kernel against its measurement probes (the template's probe: y is not the product
# there, so their "max |y - first's|" is large by design): the multiplies alone (the first step's tiles at every
# step), the same without barriers, the staging alone (multiplies at the last step only)
PROBE_VARIANTS = [
    ("x16, sgc", {"xsrc": "f16", "sgc": True}),
    ("probe mma (no staging in the loop)", {"xsrc": "f16", "sgc": True, "probe": "mma"}),
    ("probe mma, no barriers", {"xsrc": "f16", "sgc": True, "probe": "mma-nobarrier"}),
    ("probe stage (multiplies at the last step)", {"xsrc": "f16", "sgc": True, "probe": "stage"}),
]

# (kernel group, label, tiling, policy); "sgmat-sweep": the rest of matmul_sgmat's sweep (docs/benchmarks.md)
VARIANTS = [
    # the policy names matmul_i8: left to "auto", an adapter with f16 subgroup matrices gets matmul_sgmat_f16
    ("i8", "matmul_i8 (planner's tile)", None, {"prefill": "i8"}),
    # matmul_i8's tiles (N >= 4096's): today's, with register prefetch (pf), taller / wider ones a block a K step
    ("i8-sweep", "i8 64x64 4x4 kb2", "MatmulI8Tiling()", {}),
    ("i8-sweep", "i8 64x64 4x4 kb2 pf", "MatmulI8Tiling(pf=True)", {}),
    ("i8-sweep", "i8 128x64 8x4 kb1 pf", "MatmulI8Tiling(tm=128, rm=8, kb=1, pf=True)", {}),
    ("i8-sweep", "i8 64x128 4x8 kb1 pf", "MatmulI8Tiling(tn=128, rn=8, kb=1, pf=True)", {}),
    ("sgmat", "sgmat planner", None, {"prefill": "sgmat"}),
    ("sgmat-sweep", "sgmat kb1", "MatmulSgmatTiling(kb=1)", {}),
    ("sgmat", "sgmat 4x2 subgroups, 1x2 tiles", "MatmulSgmatTiling(sg_m=4, sg_n=2, ti=1, tj=2)", {}),
    ("sgmat-sweep", "sgmat 2x4 subgroups, 2x1 tiles", "MatmulSgmatTiling(sg_m=2, sg_n=4, ti=2, tj=1)", {}),
    ("sgmat-sweep", "sgmat 4x4 subgroups, 1x1 tiles", "MatmulSgmatTiling(sg_m=4, sg_n=4, ti=1, tj=1)", {}),
    ("sgmat-sweep", "sgmat 2x2 subgroups, 2x4 tiles, kb1", "MatmulSgmatTiling(tj=4, kb=1)", {}),
    ("sgmat-sweep", "sgmat one plane", "MatmulSgmatTiling(planes=1)", {}),
    # matmul_sgmat_f16: sg_m x sg_n subgroups, ti x tj tiles each (workgroup tile TM x TN), kb, db, pf
    # ("f16-sweep": the first sweep's losers, docs/benchmarks.md "f16 weight tiles")
    ("f16", "f16 planner", None, {"prefill": "sgmat-f16"}),
    ("f16", "f16 64x64, 2x2 sg, 2x2, kb2", "MatmulSgmatF16Tiling()", {}),
    ("f16", "f16 64x64, 2x2 sg, 2x2, kb2, pf", "MatmulSgmatF16Tiling(pf=True)", {}),
    ("f16", "f16 128x128, 2x4 sg, 4x2, kb2", "MatmulSgmatF16Tiling(sg_n=4, ti=4)", {}),
    ("f16", "f16 128x128, 2x4 sg, 4x2, kb2, pf", "MatmulSgmatF16Tiling(sg_n=4, ti=4, pf=True)", {}),
    ("f16", "f16 128x128, 2x4 sg, 4x2, kb1, pf", "MatmulSgmatF16Tiling(sg_n=4, ti=4, kb=1, pf=True)", {}),
    ("f16", "f16 128x128, 2x2 sg, 4x4, kb2", "MatmulSgmatF16Tiling(ti=4, tj=4)", {}),
    ("f16", "f16 128x128, 2x2 sg, 4x4, kb2, pf", "MatmulSgmatF16Tiling(ti=4, tj=4, pf=True)", {}),
    ("f16", "f16 128x64, 2x2 sg, 4x2, kb2, pf", "MatmulSgmatF16Tiling(ti=4, pf=True)", {}),
    ("f16", "f16 64x128, 2x2 sg, 2x4, kb2, pf", "MatmulSgmatF16Tiling(tj=4, pf=True)", {}),
    ("f16", "f16 128x64, 4x2 sg, 2x2, kb2, pf", "MatmulSgmatF16Tiling(sg_m=4, pf=True)", {}),
    ("f16-sweep", "f16 64x64, 2x2 sg, 2x2, kb2, double-buffered", "MatmulSgmatF16Tiling(db=True)", {}),
    ("f16-sweep", "f16 64x64, 2x2 sg, 2x2, kb1", "MatmulSgmatF16Tiling(kb=1)", {}),
    ("f16-sweep", "f16 64x64, 2x2 sg, 2x2, kb4", "MatmulSgmatF16Tiling(kb=4)", {}),
    ("f16-sweep", "f16 128x64, 4x2 sg, 2x2, kb2", "MatmulSgmatF16Tiling(sg_m=4)", {}),
    ("f16-sweep", "f16 64x128, 2x4 sg, 2x2, kb2", "MatmulSgmatF16Tiling(sg_n=4)", {}),
    ("f16-sweep", "f16 64x32, 2x1 sg, 2x2, kb2", "MatmulSgmatF16Tiling(sg_n=1)", {}),
    ("f16-sweep", "f16 32x64, 1x2 sg, 2x2, kb2", "MatmulSgmatF16Tiling(sg_m=1)", {}),
    # the planner's tiles, its 128x128 at a shorter and a longer K step (fewer barriers) and a larger tile (fewer
    # staged values a multiply), all with pf, x16 and sgc
    *[
        ("f16-big", f"f16 {name}", f"MatmulSgmatF16Tiling({args}pf=True, x16=True, sgc=True)", {})
        for name, args in (
            ("128x128, 2x4 sg, 4x2, kb2 (planner's)", "sg_n=4, ti=4, "),
            ("64x64, 2x2 sg, 2x2, kb2 (planner's)", ""),
            ("128x128, 2x4 sg, 4x2, kb1", "sg_n=4, ti=4, kb=1, "),
            ("128x128, 2x4 sg, 4x2, kb4", "sg_n=4, ti=4, kb=4, "),
            ("256x128, 4x4 sg, 4x2, kb2", "sg_m=4, sg_n=4, ti=4, "),
            # 256 tokens x 128 rows from 8 subgroups of 4x4 tiles at kb 1 (38,912 B): each weight dequantized once
            # per 256 tokens, at the 128x128's thread count (test_f16_template_emulated covers it)
            ("256x128, 4x2 sg, 4x4, kb1", "sg_m=4, sg_n=2, ti=4, tj=4, kb=1, "),
        )
    ],
    # workgroups an SM (time at 132 vs 264 workgroups: --shapes 512x4224x4096,512x8448x4096): the 128x128 tile runs
    # one an SM even at kb 1 (28.7 KiB of workgroup memory), the 64x64 two (docs/benchmarks.md, "one workgroup an
    # SM"): registers, not workgroup memory, bound it; these drop what holds registers (pf's loads in flight, sgc's
    # switch) to see whether a second workgroup fits
    *[
        ("occ", f"occ 128x128 {name}", f"MatmulSgmatF16Tiling({args}x16=True)", {})
        for name, args in (
            ("pf sgc (planner's)", "sg_n=4, ti=4, pf=True, sgc=True, "),
            ("sgc", "sg_n=4, ti=4, sgc=True, "),
            ("pf", "sg_n=4, ti=4, pf=True, "),
            ("plain", "sg_n=4, ti=4, "),
            ("4x2 sg of 2x4, sgc", "sg_m=4, sg_n=2, ti=2, tj=4, sgc=True, "),
            # 512 threads, half the accumulators and staged loads a thread: twice the warps to hide the staging's
            # load latency in one workgroup an SM, or a second workgroup if the registers then allow it. At kb 2
            # its 16 subgroups' result tiles take it to 53,248 bytes of workgroup memory, past NVIDIA's 48 KiB
            # (the H100 said only "Invalid ComputePipeline"; the bench now says so before trying); at kb 1 it is
            # 36,864: compare with "kb1 sgc" and "kb1 pf sgc" (256 threads)
            ("4x4 sg of 2x2, pf sgc (512 threads)", "sg_m=4, sg_n=4, ti=2, tj=2, pf=True, sgc=True, "),
            ("4x4 sg of 2x2, kb1 pf sgc (512 threads)", "sg_m=4, sg_n=4, ti=2, tj=2, kb=1, pf=True, sgc=True, "),
            ("4x4 sg of 2x2, kb1 sgc (512 threads)", "sg_m=4, sg_n=4, ti=2, tj=2, kb=1, sgc=True, "),
            # kb 2 at 512 threads within 48 KiB: the 16 subgroups go out in 2 turns through 8 result slices
            # (45,056 bytes); the planner's tile with 2 turns prices the turns' barriers
            (
                "4x4 sg of 2x2, pf sgc, 2 turns out (512 threads)",
                "sg_m=4, sg_n=4, ti=2, tj=2, pf=True, sgc=True, out_turns=2, ",
            ),
            ("4x4 sg of 2x2, sgc, 2 turns out (512 threads)", "sg_m=4, sg_n=4, ti=2, tj=2, sgc=True, out_turns=2, "),
            ("pf sgc, 2 turns out", "sg_n=4, ti=4, pf=True, sgc=True, out_turns=2, "),
            ("kb1 sgc", "sg_n=4, ti=4, kb=1, sgc=True, "),
            ("kb1 pf sgc", "sg_n=4, ti=4, kb=1, pf=True, sgc=True, "),
        )
    ],
    # split-K (splits S: S workgroups a tile over K slices, then splitk_sum's dispatch, timed with it)
    ("split", "split planner s1", None, {"prefill": "sgmat-f16", "sgmat_f16_splits": 1}),
    *[
        ("split", f"split {name} s{s}", f"MatmulSgmatF16Tiling({args}pf=True, splits={s})", {})
        for name, args, splits in (
            ("128x128", "sg_n=4, ti=4, ", (1, 2, 3, 4)),
            ("64x64", "", (1, 2, 4)),
            ("128x64", "sg_m=4, ", (2,)),
        )
        for s in splits
    ],
]


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument(
        "--shapes", default="512x4096x4096,512x14336x4096,512x2048x2048,512x8192x2048", help="TxNxK, comma-separated"
    )
    p.add_argument("--reps", type=int, default=30)
    p.add_argument("--kernels", default="i8,sgmat,f16", help="which groups of VARIANTS to time")
    p.add_argument("--variants", default="", help="only VARIANTS whose label holds one of these, comma-separated")
    p.add_argument("--rounds", type=int, default=3, help="--kernels copy: alternating rounds (best of)")
    p.add_argument(
        "--dawn-flag", action="append", default=[], choices=TOGGLES, help="a further Dawn toggle (repeatable)"
    )
    a = p.parse_args()
    flags = list(dict.fromkeys(["allow_unsafe_apis", "vulkan_enable_f16_on_nvidia", *a.dawn_flag]))
    groups = a.kernels.split(",")
    # groups that render the kernel directly (_COPY)
    direct = {"copy": COPY_VARIANTS, "sgc": SGC_VARIANTS, "probe": PROBE_VARIANTS}
    if len(groups) == 1 and groups[0] in direct:
        chosen = direct[groups[0]]
        with DawnHost(flags=flags, timeout=600) as host:
            if not host.exec(_SETUP)["f16"]:
                print("sgmat_bench: this adapter has no f16 subgroup matrices", file=sys.stderr)
                return 1
            for shape in a.shapes.split(","):
                T, N, K = (int(v) for v in shape.split("x"))
                code = _COPY.format(T=T, N=N, K=K, reps=a.reps, rounds=a.rounds, variants=repr(chosen))
                for row in host.exec(code):
                    print(json.dumps(row), flush=True)
        return 0
    with DawnHost(flags=flags, timeout=600) as host:
        offered = host.exec(_SETUP)  # {"i8": i8 subgroup matrices, "f16": f16 ones}
        need = {
            "sgmat": "i8",
            "sgmat-sweep": "i8",
            "f16": "f16",
            "f16-sweep": "f16",
            "f16-big": "f16",
            "occ": "f16",
            "split": "f16",
        }
        for g in groups:
            if g in need and not offered[need[g]]:
                print(f"sgmat_bench: this adapter has no {need[g]} subgroup matrices: no {g} rows", file=sys.stderr)
        chosen = [v for v in VARIANTS if v[0] in groups and (v[0] not in need or offered[need[v[0]]])]
        if a.variants:
            chosen = [v for v in chosen if any(w in v[1] for w in a.variants.split(","))]
        if not chosen:
            return 1
        variants = "[" + ", ".join(f"({lab!r}, {t or 'None'}, {pol!r})" for _, lab, t, pol in chosen) + "]"
        for shape in a.shapes.split(","):
            T, N, K = (int(v) for v in shape.split("x"))
            for row in host.exec(_TIME.format(T=T, N=N, K=K, reps=a.reps, variants=variants)):
                print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
