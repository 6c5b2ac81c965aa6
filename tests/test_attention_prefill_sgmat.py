"""attention_prefill_sgmat.wgsl.j2 (prompt attention on f16 subgroup matrices) on lavapipe, its subgroup-matrix
builtins emulated (tests/sgmat_emulation.emulate_any), planned as on an adapter with f16 subgroup matrices and run
through PagedAttention as the model does, vs numpy's float64 attention (tests/attention_helpers.reference):
chunks over pages out of order, each cache element, GQA groups 4 and 3, head_dim 32 and 64, sliding
window and softcap. The device check of the real builtins is scripts/prefill_attention_check.py.

The bound (attention_helpers.sgmat_bound): the kernel rounds q * scale and K to f16 (u = 2^-11 each; K exactly where the cache is
f16), so each score is off by at most delta = (2u + u^2 + D 2^-24) scale sum_i |q_i k_i| (the last term: the
f32 sums), at most delta_row over the positions a row sees; softmax weights then move by factors within
exp(+-2 delta_row), so an output moves by at most (exp(2 delta_row) - 1) sum_j p_j |v_j|. V (f32 cache) and P
rounded to f16 (while l sums the f32 P) add u sum_j p_j |v_j| each, and P's f16 subnormals (below 2^-14; P <= 1)
an absolute 2^-25 per position: N 2^-25 max |v|."""

import dataclasses

import numpy as np
import pytest

from webllm_py import attention as attention_mod
from webllm_py import planner
from webllm_py.planner import Adapter, KernelPolicy, PrefillTiling, prefill_tiles

from .attention_helpers import Harness, make_qkv, reference, sgmat_bound, shuffled_cache
from .sgmat_emulation import emulating_any

CASES = [
    # (layout, cache, N, chunks, window, softcap): head_dim 64 (1B's), group 4 (1B's and 8B's) and 3, two
    # chunks (the second's keys span the first's positions), 70 positions (three key tiles);
    # head_dim 128 only on the device (its emulated kernel takes ~30 s to compile on lavapipe)
    ((8, 2, 64), "f16x2", 70, [40, 30], None, None),
    ((8, 2, 64), "f32", 50, [50], None, None),
    ((6, 2, 32), "f16", 60, [37, 23], 20, 30.0),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}-{c[1]}-w{c[4]}-c{c[5]}")
def test_sgmat_prefill_emulated(device, monkeypatch, case):
    layout, dtype, N, chunks, window, softcap = case
    # the planner as on an adapter with f16 subgroup matrices (lavapipe's limits)
    adapter = dataclasses.replace(Adapter.of(device), cpu=False, f16_subgroup_matrix=True, subgroups=True)
    monkeypatch.setattr(attention_mod.Adapter, "of", classmethod(lambda cls, d: adapter))
    group = layout[0] // layout[1]
    policy = KernelPolicy(prefill_attention_kernel="sgmat-f16")
    t = prefill_tiles(adapter, layout[2], group, policy)
    assert t.sgmat and t.tq * group % 16 == 0, t
    q, k, v = make_qkv(N, 3, layout)
    f16_kv = dtype != "f32"
    if f16_kv:
        k, v = k.astype(np.float16).astype(np.float32), v.astype(np.float16).astype(np.float32)
    ref = reference(q, k, v, layout[0], layout[1], window=window, softcap=softcap)
    bound = sgmat_bound(q, k, v, layout[0], layout[1], window=window, softcap=softcap, f16_kv=f16_kv)
    with emulating_any(device):
        cache = shuffled_cache(device, num_blocks=-(-N // 16) + 4, block_size=16, layout=layout, dtype=dtype)
        h = Harness(
            device, cache, max_tokens=max(chunks), layout=layout, sliding_window=window, softcap=softcap, policy=policy
        )
        assert h.attn.plan.prefill.sgmat
        got = h.run(0, q, k, v, chunks)
    err = np.abs(got - ref)
    assert np.isfinite(got).all()
    assert (err <= bound).all(), (
        f"max err {err.max():.3g} at {np.unravel_index(err.argmax(), err.shape)}, bound there {bound.flat[err.argmax()]:.3g}"
    )


def test_planner_rows():
    """The planner's row: attention_prefill_sgmat under prefill_attention_kernel="sgmat-f16" (or an sgmat tiling)
    on GPU adapters with f16 subgroup matrices and head_dim % 16 == 0; the lanes form by default (until measured:
    planner.SGMAT_ATTENTION_AUTO), under "lanes" and where it does not fit; "sgmat-f16" without it is an error."""
    a = Adapter(subgroups=True, subgroup_min=32, workgroup_storage=49152, f16=True, f16_subgroup_matrix=True)
    sg = KernelPolicy(prefill_attention_kernel="sgmat-f16")
    assert prefill_tiles(a, 128, 4, sg) == PrefillTiling(16, 32, sgmat=True)
    assert prefill_tiles(a, 64, 8, sg) == PrefillTiling(8, 32, sgmat=True)
    assert prefill_tiles(a, 64, 3, sg) == PrefillTiling(16, 32, sgmat=True)
    assert prefill_tiles(a, 64, 4, KernelPolicy(prefill_attention=PrefillTiling(16, 64, sgmat=True))).tk == 64
    with pytest.raises(ValueError, match="sgmat-f16"):  # 128 rows: Q does not fit where the K/V tile goes
        prefill_tiles(a, 64, 4, KernelPolicy(prefill_attention=PrefillTiling(32, 32, sgmat=True)))
    assert prefill_tiles(a, 128, 4).sgmat == planner.SGMAT_ATTENTION_AUTO
    assert not prefill_tiles(a, 128, 4, KernelPolicy(prefill_attention_kernel="lanes")).sgmat
    for adapter, head_dim in (
        (a, 120),  # head_dim not a multiple of 16
        (dataclasses.replace(a, workgroup_storage=16384), 128),
        (dataclasses.replace(a, f16_subgroup_matrix=False), 128),
        (dataclasses.replace(a, cpu=True), 128),
    ):
        assert planner.sgmat_prefill_tiling(adapter, head_dim, 4, sg) is None
        with pytest.raises(ValueError, match="sgmat-f16"):
            prefill_tiles(adapter, head_dim, 4, sg)
    with pytest.raises(ValueError, match="prefill_attention_kernel"):
        KernelPolicy(prefill_attention_kernel="tiles")
