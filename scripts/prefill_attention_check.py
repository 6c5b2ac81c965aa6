"""attention_prefill's GPU forms on this machine's adapter vs numpy (tests/attention_helpers.reference):
the 1B and 8B head layouts, each KV cache element the adapter takes, the planner's tiling and others
(TQ, TK, L[, R]; L = 1: a thread per query row), 300 positions in chunks of 128, 128 and 44 over pages
out of order. On a CPU adapter the GPU form is forced (as tests/test_attention_prefill_forms.py does);
there use --quick: lavapipe's llvmpipe caps an invocation's loop iterations (~65,535), which the
one-thread-per-row form passes at ~240 positions of head_dim 128 (~480 of 64: its dot and acc loops
run positions x head_dim times each), giving wrong rows there and only there.

    python scripts/prefill_attention_check.py [--quick]   # one JSON line per case; exit 1 on a mismatch
"""

from __future__ import annotations

import json
import sys

import numpy as np

sys.path.insert(0, ".")
from tests.attention_helpers import Harness, make_qkv, reference, shuffled_cache  # noqa: E402
from webllm_py.gpu.native import NativeDevice  # noqa: E402
from webllm_py.planner import KernelPolicy, PrefillTiling  # noqa: E402

QUICK = "--quick" in sys.argv


def main() -> int:
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
