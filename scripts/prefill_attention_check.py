"""attention_prefill's GPU forms on this machine's adapter vs numpy (tests/attention_helpers.reference):
the 1B and 8B head layouts, each KV cache element the adapter takes, the planner's tiling and others
(TQ, TK, L[, R]; L = 1: a thread per query row), 300 positions in chunks of 128, 128 and 44 over pages
out of order. On a CPU adapter the GPU form is forced (as tests/test_attention_prefill_forms.py does);
there use --quick: lavapipe's llvmpipe caps an invocation's loop iterations (~65,535), which the
one-thread-per-row form passes at ~240 positions of head_dim 128 (~480 of 64: its dot and acc loops
run positions x head_dim times each), giving wrong rows there and only there.

    python scripts/prefill_attention_check.py [--quick]   # one JSON line per case; exit 1 on a mismatch

--dawn: on Dawn (DawnHost, Pyodide + BrowserDevice, flags allow_unsafe_apis and vulkan_enable_f16_on_nvidia), the
same layouts, caches and chunks through PagedAttention under prefill_attention_kernel="sgmat-f16"
(attention_prefill_sgmat; f16 and f16x2 caches only) and "lanes"; sgmat within
tests/attention_helpers.sgmat_bound (the bound tests/test_attention_prefill_sgmat.py derives), lanes within the
tolerances above.
"""

from __future__ import annotations

import base64
import json
import sys

import numpy as np

sys.path.insert(0, ".")
from tests.attention_helpers import Harness, make_qkv, reference, sgmat_bound, shuffled_cache  # noqa: E402
from webllm_py.planner import KernelPolicy, PrefillTiling  # noqa: E402

QUICK = "--quick" in sys.argv


_DAWN_SETUP = """
import base64, random, struct
from webllm_py.attention import PagedAttention
from webllm_py.gpu.browser import BrowserDevice
from webllm_py.kv_cache import PagedKVCache
from webllm_py.planner import Adapter, KernelPolicy, PrefillTiling
dev = await BrowserDevice.create()
Adapter.of(dev).f16_subgroup_matrix
"""

# Pyodide side (no numpy there): PagedAttention over a cache with pages out of order, chunk by chunk, as
# tests/attention_helpers.Harness drives it
_DAWN_RUN = """
def _b(s): return base64.b64decode(s)
H, KV, D = {layout}
chunks = {chunks}
N, T = sum(chunks), max(chunks)
q, k, v = _b({q!r}), _b({k!r}), _b({v!r})
cache = PagedKVCache(dev, 1, KV, D, block_size=16, num_blocks=-(-N // 16) + 4, dtype={dtype!r})
random.Random(0).shuffle(cache._free)
attn = PagedAttention(dev, cache, H, KV, D, T, policy={policy})
bufs = [dev.create_buffer(T * n * D * 4) for n in (H, KV, KV, H)]
step, table = dev.create_buffer(8), dev.create_buffer(cache.table_buffer_size())
bound = attn.bind(0, *bufs, step, table)
out, pos = b"", 0
for c in chunks:
    cache.ensure(0, pos + c, first_new=pos)
    for buf, x, n in zip(bufs, (q, k, v), (H, KV, KV)):
        dev.write_buffer(buf, x[pos * n * D * 4 : (pos + c) * n * D * 4])
    dev.write_buffer(step, struct.pack("<2I", pos, c))
    dev.write_buffer(table, cache.table_bytes(0))
    with dev.recorder() as rec:
        bound.record(rec, c)
    out += bytes(await dev.read_buffer(bufs[3], 0, c * H * D * 4))
    pos += c
p = attn.plan.prefill
[[p.tq, p.tk, p.lanes, p.rows, p.sgmat, p.sgc, p.twopass, p.splits, p.lazy], base64.b64encode(out).decode()]
"""


def _b64(a) -> str:
    return base64.b64encode(np.ascontiguousarray(a, np.float32).tobytes()).decode()


def dawn() -> int:
    from webllm_py.dawn import DawnHost

    ok = True
    N, chunks = 300, [128, 128, 44]
    with DawnHost(flags=["allow_unsafe_apis", "vulkan_enable_f16_on_nvidia"], timeout=300) as host:
        sgmat16 = host.exec(_DAWN_SETUP)
        print(json.dumps(dict(f16_subgroup_matrix=sgmat16)), flush=True)
        ok &= bool(sgmat16)
        for layout in ((32, 8, 64), (32, 8, 128)):
            q, k, v = make_qkv(N, 1, layout)
            for dtype in ("f16", "f16x2", "f32"):
                f16_kv = dtype != "f32"
                kr, vr = (
                    (k.astype(np.float16).astype(np.float32), v.astype(np.float16).astype(np.float32))
                    if f16_kv
                    else (k, v)
                )
                ref = reference(q, kr, vr, layout[0], layout[1])
                bound = sgmat_bound(q, kr, vr, layout[0], layout[1]) if f16_kv else None
                # the planner refuses attention_prefill_sgmat over an f32 cache (sgmat_prefill_tiling); "sgmat-f16
                # twopass": the template's twopass with sgc (PrefillTiling.twopass, off by default); "sgmat-f16
                # slices": the key walk in 4 slices merged by attention_combine (PrefillTiling.splits, off by
                # default); "sgmat-f16 lazy": O held as result matrices, rescaled when a max grows by more than 8
                # (PrefillTiling.lazy, off by default); "lazy1": by more than 1 (rescales in some tiles); "lazy48":
                # 48 keys a tile
                forms = {
                    "sgmat-f16": "KernelPolicy(prefill_attention_kernel='sgmat-f16')",
                    "sgmat-f16 twopass": "KernelPolicy(prefill_attention=PrefillTiling(16, 32, sgmat=True, sgc=True, "
                    "twopass=True))",
                    "sgmat-f16 slices": "KernelPolicy(prefill_attention=PrefillTiling(16, 32, sgmat=True, sgc=True, "
                    "splits=4))",
                    "sgmat-f16 lazy": "KernelPolicy(prefill_attention=PrefillTiling(16, 32, sgmat=True, sgc=True, "
                    "lazy=8))",
                    "sgmat-f16 lazy1": "KernelPolicy(prefill_attention=PrefillTiling(16, 32, sgmat=True, sgc=True, "
                    "lazy=1))",
                    "sgmat-f16 lazy48": "KernelPolicy(prefill_attention=PrefillTiling(16, 48, sgmat=True, sgc=True, "
                    "lazy=8))",
                    "lanes": "KernelPolicy(prefill_attention_kernel='lanes')",
                }
                for kernel in forms if f16_kv else ("lanes",):
                    policy = forms[kernel]
                    tiling, got = host.exec(
                        _DAWN_RUN.format(
                            layout=layout, chunks=chunks, q=_b64(q), k=_b64(k), v=_b64(v), dtype=dtype, policy=policy
                        )
                    )
                    got = np.frombuffer(base64.b64decode(got), np.float32).reshape(N, -1).astype(np.float64)
                    err = np.abs(got - ref)
                    tol = bound if tiling[4] else (2e-3 if f16_kv else 2e-4)
                    good = bool(
                        np.isfinite(got).all() and (err <= tol).all() and tiling[4] == kernel.startswith("sgmat-f16")
                    )
                    ok &= good
                    print(
                        json.dumps(
                            dict(
                                layout=layout,
                                cache=dtype,
                                kernel=kernel,
                                tiling=tiling,
                                max_err=float(err.max()),
                                max_bound=float(np.max(tol)),
                                ok=good,
                            )
                        ),
                        flush=True,
                    )
    return 0 if ok else 1


def main() -> int:
    if "--dawn" in sys.argv:
        return dawn()
    from webllm_py.gpu.native import NativeDevice

    dev = NativeDevice(use_subgroups=True)
    kernel = dev.kernel

    def gpu_form(template, label="", **p):
        return kernel(template, label, **(dict(p, cpu_adapter=False) if template == "attention_prefill" else p))

    dev.kernel = gpu_form
    ok = True
    N, chunks = (70, [64, 6]) if QUICK else (300, [128, 128, 44])
    dtypes = ["f16x2", "f32"] + (["f16"] if dev.has_f16 else [])
    for layout in ((32, 8, 64), (32, 8, 128)):
        lanes = 8 if layout[2] >= 128 else 4
        grid = [None, (16, 32, 1), (4, 32, lanes), (8, 32, lanes, 2), (4, 16, 4)]
        q, k, v = make_qkv(N, 1, layout)
        for dtype in dtypes[:1] if QUICK else dtypes:
            kr, vr = (
                (k, v)
                if dtype == "f32"
                else (k.astype(np.float16).astype(np.float32), v.astype(np.float16).astype(np.float32))
            )
            ref = reference(q, kr, vr, layout[0], layout[1])
            for g in grid[:3] if QUICK else grid:
                if g and g[2] > 1 and not dev.has_subgroups:
                    continue
                cache = shuffled_cache(dev, num_blocks=-(-N // 16) + 4, block_size=16, layout=layout, dtype=dtype)
                policy = KernelPolicy(prefill_attention=PrefillTiling(*g) if g else None)
                h = Harness(dev, cache, max_tokens=max(chunks), layout=layout, policy=policy)
                got = h.run(0, q, k, v, chunks)
                err = float(np.abs(got - ref).max())
                tol = 2e-3 if dtype != "f32" else 2e-4  # f16 K/V: WGSL may round either way (one f16 ulp)
                good = bool(np.isfinite(got).all() and err < tol)
                ok &= good
                p = h.attn.plan.prefill
                print(
                    json.dumps(
                        dict(
                            layout=layout,
                            cache=dtype,
                            tiling=[p.tq, p.tk, p.lanes, p.rows],
                            default=g is None,
                            max_err=err,
                            ok=good,
                        )
                    ),
                    flush=True,
                )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
