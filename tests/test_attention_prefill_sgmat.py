"""attention_prefill_sgmat.wgsl.j2 (prompt attention on f16 subgroup matrices) on lavapipe, its subgroup-matrix
builtins emulated (tests/sgmat_emulation.emulate_any), planned as on an adapter with f16 subgroup matrices and run
through PagedAttention as the model does, vs numpy's float64 attention (tests/attention_helpers.reference):
chunks over pages out of order, each cache element it runs over (f16, f16x2: not f32, see
test_f32_cache_is_never_attended_in_f16), GQA groups 4 and 3, head_dim 32 and 64, sliding
window and softcap. The device check of the real builtins is scripts/prefill_attention_check.py.

The bound (attention_helpers.sgmat_bound): the kernel rounds q * scale / s to f16 (s: the row's power of two, 1
unless it passes 2^14; u = 2^-11), and q's values below 2^-14 s are f16 subnormals (off by up to 2^-25 s); K and V
are the cache's f16 values, exact. So each score is off by at most
delta = (u + D 2^-24) scale sum_i |q_i k_i| + 2^-25 s sum_i |k_i| (D 2^-24: the f32 sums), at most
delta_row over the positions a row sees; softmax weights then move by factors within
exp(+-2 delta_row), so an output moves by at most (exp(2 delta_row) - 1) sum_j p_j |v_j|. P rounded to f16
(while l sums the f32 P) adds u sum_j p_j |v_j|, and P's f16 subnormals (below 2^-14; P <= 1)
an absolute 2^-25 per position: N 2^-25 max |v|."""

import dataclasses

import numpy as np
import pytest

from webllm_py import attention as attention_mod
from webllm_py import planner
from webllm_py.errors import KernelPolicyError
from webllm_py.planner import Adapter, KernelPolicy, PrefillTiling, prefill_tiles

from .attention_helpers import Harness, make_qkv, reference, sgmat_bound, shuffled_cache
from .sgmat_emulation import emulating_any

CASES = [
    # (layout, cache, N, chunks, window, softcap): head_dim 64 (1B's), group 4 (1B's and 8B's) and 3, two
    # chunks (the second's keys span the first's positions), 70 positions (three key tiles);
    # head_dim 128 only on the device (its emulated kernel takes ~30 s to compile on lavapipe)
    ((8, 2, 64), "f16x2", 70, [40, 30], None, None),
    ((6, 2, 32), "f16", 60, [37, 23], 20, 30.0),
]


def as_sgmat_adapter(device, monkeypatch, **kw):
    """The planner as on an adapter with f16 subgroup matrices (lavapipe's limits)."""
    adapter = dataclasses.replace(
        Adapter.of(device), **{"cpu": False, "f16_subgroup_matrix": True, "subgroups": True, **kw}
    )
    monkeypatch.setattr(attention_mod.Adapter, "of", classmethod(lambda cls, d: adapter))
    return adapter


def run_emulated(device, policy, q, k, v, layout, dtype, chunks, window=None, softcap=None):
    """q, k, v through a PagedAttention planned by `policy` (the model's path: a shuffled paged cache of `dtype`,
    the chunks in turn), the subgroup-matrix builtins emulated: (the attention, its output)."""
    with emulating_any(device):
        cache = shuffled_cache(device, num_blocks=-(-q.shape[0] // 16) + 4, block_size=16, layout=layout, dtype=dtype)
        h = Harness(
            device, cache, max_tokens=max(chunks), layout=layout, sliding_window=window, softcap=softcap, policy=policy
        )
        return h.attn, h.run(0, q, k, v, chunks)


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}-{c[1]}-w{c[4]}-c{c[5]}")
def test_sgmat_prefill_emulated(device, monkeypatch, case):
    layout, dtype, N, chunks, window, softcap = case
    adapter = as_sgmat_adapter(device, monkeypatch)
    group = layout[0] // layout[1]
    policy = KernelPolicy(prefill_attention_kernel="sgmat-f16")
    t = prefill_tiles(adapter, layout[2], group, policy)
    assert t.sgmat and t.tq * group % 16 == 0, t
    q, k, v = make_qkv(N, 3, layout)
    k, v = k.astype(np.float16).astype(np.float32), v.astype(np.float16).astype(np.float32)  # the cache's values
    ref = reference(q, k, v, layout[0], layout[1], window=window, softcap=softcap)
    bound = sgmat_bound(q, k, v, layout[0], layout[1], window=window, softcap=softcap)
    attn, got = run_emulated(device, policy, q, k, v, layout, dtype, chunks, window, softcap)
    assert attn.plan.prefill.sgmat
    err = np.abs(got - ref)
    assert np.isfinite(got).all()
    assert (err <= bound).all(), (
        f"max err {err.max():.3g} at {np.unravel_index(err.argmax(), err.shape)}, bound there {bound.flat[err.argmax()]:.3g}"
    )


def test_sgmat_prefill_constant_offsets_emulated(device, monkeypatch):
    """PrefillTiling.sgc (the template's sgc: a tile's products in a switch over the subgroup, so that every
    matrix load and store of the key walk is at a constant offset): out bit-equal to the kernel without it, and
    within the bound of numpy's attention. Group 3 (3 subgroups: a case whose offsets are all non-zero), a
    window and a softcap, two chunks; the small layout because the switch is SG copies of the products, which
    lavapipe's emulation compiles slowly."""
    layout, N, chunks, window, softcap = (6, 2, 32), 60, [37, 23], 20, 30.0
    as_sgmat_adapter(device, monkeypatch)
    q, k, v = make_qkv(N, 7, layout)
    k, v = k.astype(np.float16).astype(np.float32), v.astype(np.float16).astype(np.float32)
    ref = reference(q, k, v, 6, 2, window=window, softcap=softcap)
    bound = sgmat_bound(q, k, v, 6, 2, window=window, softcap=softcap)
    got = {}
    with emulating_any(device):
        for sgc in (False, True):
            policy = KernelPolicy(prefill_attention=PrefillTiling(16, 32, sgmat=True, sgc=sgc))
            cache = shuffled_cache(device, num_blocks=-(-N // 16) + 4, block_size=16, layout=layout, dtype="f16")
            h = Harness(
                device,
                cache,
                max_tokens=max(chunks),
                layout=layout,
                sliding_window=window,
                softcap=softcap,
                policy=policy,
            )
            assert h.attn.plan.prefill.sgmat and h.attn.plan.prefill.sgc == sgc
            got[sgc] = h.run(0, q, k, v, chunks)
    assert np.array_equal(got[True], got[False]), np.abs(got[True] - got[False]).max()
    err = np.abs(got[True] - ref)
    assert (err <= bound).all(), f"max err {err.max():.3g}, bound there {bound.flat[err.argmax()]:.3g}"


@pytest.mark.parametrize(
    "case",
    [((8, 2, 64), "f16x2", 70, [40, 30], None, None, False), ((6, 2, 32), "f16", 60, [37, 23], 20, 30.0, True)],
    ids=["g4-d64-f16x2", "g3-d32-window-softcap-sgc"],
)
def test_sgmat_prefill_two_pass_emulated(device, monkeypatch, case):
    """PrefillTiling.twopass (the template's twopass: the rows' max first, then P V into O's blocks held as result
    matrices, never rescaled) within the bound of numpy's attention: group 4 at head_dim 64 over an f16x2 cache
    (70 positions: three key tiles, the second chunk's keys spanning the first's), and group 3 with a window, a
    softcap and sgc's switch; two chunks each."""
    layout, dtype, N, chunks, window, softcap, sgc = case
    as_sgmat_adapter(device, monkeypatch)
    q, k, v = make_qkv(N, 11, layout)
    k, v = k.astype(np.float16).astype(np.float32), v.astype(np.float16).astype(np.float32)
    ref = reference(q, k, v, layout[0], layout[1], window=window, softcap=softcap)
    bound = sgmat_bound(q, k, v, layout[0], layout[1], window=window, softcap=softcap)
    policy = KernelPolicy(prefill_attention=PrefillTiling(16, 32, sgmat=True, sgc=sgc, twopass=True))
    attn, got = run_emulated(device, policy, q, k, v, layout, dtype, chunks, window, softcap)
    assert attn.plan.prefill.sgmat and attn.plan.prefill.twopass
    err = np.abs(got - ref)
    assert np.isfinite(got).all()
    assert (err <= bound).all(), f"max err {err.max():.3g}, bound there {bound.flat[err.argmax()]:.3g}"


def lazy_rescales(q, k, layout, tau, tk=32):
    """How many times rows rescale O in attention_prefill_sgmat's lazy walk (no window, no softcap, key tiles
    from position 0): per row, per key tile after its first, the tile's max visible score passing the max it
    last rescaled to by more than tau."""
    h, kv, hd = layout
    n = q.shape[0]
    qh = q.reshape(n, h, hd).astype(np.float64)
    kh = k.reshape(n, kv, hd).astype(np.float64)
    count = 0
    for head in range(h):
        s = qh[:, head] @ kh[:, head // (h // kv)].T / np.sqrt(hd)
        for pq in range(n):
            m = None
            for k0 in range(0, pq + 1, tk):
                tmax = s[pq, k0 : min(k0 + tk, pq + 1)].max()
                if m is None:
                    m = tmax
                elif tmax > m + tau:
                    count, m = count + 1, tmax
    return count


@pytest.mark.parametrize(
    "case",
    [
        ((8, 2, 64), "f16x2", 70, [40, 30], None, None, False, 1, True, 32),
        ((8, 2, 64), "f16", 70, [40, 30], None, None, True, 8, False, 32),
        ((6, 2, 32), "f16", 60, [37, 23], 20, 30.0, True, 1, True, 32),
        ((8, 2, 32), "f16x2", 110, [70, 40], None, None, True, 1, True, 48),
    ],
    ids=[
        "g4-d64-f16x2-tau1-growing",
        "g4-d64-f16-sgc-tau8",
        "g3-d32-window-softcap-sgc-tau1-growing",
        "g4-d32-tk48-sgc-tau1-growing",
    ],
)
def test_sgmat_prefill_lazy_rescale_emulated(device, monkeypatch, case):
    """PrefillTiling.lazy (the template's lazy: O's blocks held as result matrices, rescaled only when a row's max
    grows by more than lazy; S and P key-major) within the bound of numpy's attention, two chunks each (the
    second's keys spanning the first's, three key tiles). "growing": K's rows scaled up along the positions, so
    later tiles' scores pass the max by more than tau and the rescale path runs (counted in numpy for the case
    without a window); tau 8 over ordinary scores: the path that never rescales; group 3 with a window, a
    softcap and sgc's switch; 48 keys a tile (three 16-key blocks; 110 positions in three tiles)."""
    layout, dtype, N, chunks, window, softcap, sgc, tau, growing, tk = case
    as_sgmat_adapter(device, monkeypatch)
    q, k, v = make_qkv(N, 13, layout)
    if growing:
        k *= np.linspace(0.5, 3.0, N, dtype=np.float32)[:, None]
    k, v = k.astype(np.float16).astype(np.float32), v.astype(np.float16).astype(np.float32)
    if window is None:
        rescales = lazy_rescales(q, k, layout, tau, tk)
        assert (rescales > 0) == growing, rescales
    ref = reference(q, k, v, layout[0], layout[1], window=window, softcap=softcap)
    bound = sgmat_bound(q, k, v, layout[0], layout[1], window=window, softcap=softcap)
    policy = KernelPolicy(prefill_attention=PrefillTiling(16, tk, sgmat=True, sgc=sgc, lazy=tau))
    attn, got = run_emulated(device, policy, q, k, v, layout, dtype, chunks, window, softcap)
    assert attn.plan.prefill.lazy == tau and attn.plan.prefill.tk == tk
    err = np.abs(got - ref)
    assert np.isfinite(got).all()
    assert (err <= bound).all(), f"max err {err.max():.3g}, bound there {bound.flat[err.argmax()]:.3g}"


@pytest.mark.parametrize("splits", [2, 4])
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}-{c[1]}-w{c[4]}-c{c[5]}")
def test_sgmat_prefill_key_slices_emulated(device, monkeypatch, case, splits):
    """PrefillTiling.splits (the template's splits: each workgroup's key walk in slices of whole tiles, one
    workgroup each, their partial O and (m, l) merged by attention_combine) within the bound of numpy's
    attention: two chunks (the second's keys span the first's positions: 3 tiles of 32 in 2 slices, or 4 slices
    where the last walks nothing), group 4 over an f16x2 cache and group 3 with a window (slices from lo > 0)
    and a softcap; two dispatches a chunk (the slices, the merge)."""
    layout, dtype, N, chunks, window, softcap = case
    as_sgmat_adapter(device, monkeypatch)
    q, k, v = make_qkv(N, 5 + splits, layout)
    k, v = k.astype(np.float16).astype(np.float32), v.astype(np.float16).astype(np.float32)
    ref = reference(q, k, v, layout[0], layout[1], window=window, softcap=softcap)
    bound = sgmat_bound(q, k, v, layout[0], layout[1], window=window, softcap=softcap)
    policy = KernelPolicy(prefill_attention=PrefillTiling(16, 32, sgmat=True, splits=splits))
    attn, got = run_emulated(device, policy, q, k, v, layout, dtype, chunks, window, softcap)
    assert attn.plan.prefill.splits == splits and attn.prefill_combine is not None
    err = np.abs(got - ref)
    assert np.isfinite(got).all()
    assert (err <= bound).all(), f"max err {err.max():.3g}, bound there {bound.flat[err.argmax()]:.3g}"


def test_key_slices_refuse_what_the_device_cannot_hold(device, monkeypatch):
    """PrefillTiling.splits: partials past the device's binding size, or more rows than a dispatch's x can merge,
    are a KernelPolicyError when the attention is made (not a GPU validation error later)."""
    from webllm_py.attention import PagedAttention
    from webllm_py.kv_cache import PagedKVCache

    as_sgmat_adapter(device, monkeypatch)
    cache = PagedKVCache(device, n_layers=1, n_kv_heads=2, head_dim=64, num_blocks=4, dtype="f16x2")
    policy = KernelPolicy(prefill_attention=PrefillTiling(16, 32, sgmat=True, splits=4))
    monkeypatch.setattr(type(device), "max_binding_size", property(lambda self: 1 << 20))
    with pytest.raises(KernelPolicyError, match="bytes of partials"):
        PagedAttention(device, cache, 8, 2, 64, max_tokens=512, policy=policy)  # 512 x 8 x 4 x 66 x 4 B > 1 MiB
    with pytest.raises(KernelPolicyError, match="65535"):
        PagedAttention(device, cache, 8, 2, 64, max_tokens=8192, policy=policy)


def test_planner_rows():
    """The planner's row: attention_prefill_sgmat under prefill_attention_kernel="sgmat-f16" (or an sgmat tiling)
    on GPU adapters with f16 subgroup matrices and head_dim % 16 == 0, and by default at head_dim 128
    (planner.SGMAT_ATTENTION_HEAD_DIMS); the lanes form at others, under "lanes" and where it does not fit;
    "sgmat-f16" without it is an error. The planned tile loads and stores its matrices at constant offsets (sgc)."""
    a = Adapter(subgroups=True, subgroup_min=32, workgroup_storage=49152, f16=True, f16_subgroup_matrix=True)
    sg = KernelPolicy(prefill_attention_kernel="sgmat-f16")
    assert prefill_tiles(a, 128, 4, sg) == PrefillTiling(16, 32, sgmat=True, sgc=True)
    assert prefill_tiles(a, 64, 8, sg) == PrefillTiling(8, 32, sgmat=True, sgc=True)
    assert prefill_tiles(a, 64, 3, sg) == PrefillTiling(16, 32, sgmat=True, sgc=True)
    assert prefill_tiles(a, 64, 4, KernelPolicy(prefill_attention=PrefillTiling(16, 64, sgmat=True))).tk == 64
    with pytest.raises(ValueError, match="sgmat-f16"):  # 128 rows: Q does not fit where the K/V tile goes
        prefill_tiles(a, 64, 4, KernelPolicy(prefill_attention=PrefillTiling(32, 32, sgmat=True)))
    with pytest.raises(ValueError, match="1 with twopass"):  # key slices merge one pass's partials only
        prefill_tiles(
            a, 64, 4, KernelPolicy(prefill_attention=PrefillTiling(16, 32, sgmat=True, twopass=True, splits=2))
        )
    assert (
        prefill_tiles(a, 64, 4, KernelPolicy(prefill_attention=PrefillTiling(16, 32, sgmat=True, splits=3))).splits == 3
    )
    for only_sgmat in (dict(sgc=True), dict(twopass=True), dict(splits=2), dict(lazy=8)):  # not the lanes form's
        with pytest.raises(ValueError, match="need sgmat"):
            KernelPolicy(prefill_attention=PrefillTiling(16, 32, 4, **only_sgmat))
    lazy = KernelPolicy(prefill_attention=PrefillTiling(16, 32, sgmat=True, lazy=8))
    assert prefill_tiles(a, 128, 4, lazy).lazy == 8
    for bad in (dict(splits=2), dict(twopass=True), dict(lazy=12)):  # one pass, no slices, P within f16
        t = dataclasses.replace(lazy.prefill_attention, **bad)
        with pytest.raises(ValueError, match="lazy 1..11"):
            prefill_tiles(a, 128, 4, KernelPolicy(prefill_attention=t))
    assert prefill_tiles(a, 128, 4) == PrefillTiling(16, 32, sgmat=True, sgc=True)  # "auto" at head_dim 128
    assert not prefill_tiles(a, 64, 4).sgmat  # the lanes form at 64 (faster there) and 256 (not measured)
    assert not prefill_tiles(a, 256, 4).sgmat
    assert prefill_tiles(a, 256, 4, sg) == PrefillTiling(16, 32, sgmat=True, sgc=True)  # asked for: Gemma-3's heads
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
    # an f32 KV cache: never the f16 kernel, whether the cache's element comes from the policy or the caller
    assert planner.sgmat_prefill_tiling(a, 128, 4, sg, kv_dtype="f32") is None
    assert planner.sgmat_prefill_tiling(a, 128, 4, sg, kv_dtype="f16x2") == PrefillTiling(16, 32, sgmat=True, sgc=True)
    for policy, kv_dtype in ((sg, "f32"), (dataclasses.replace(sg, kv_cache="f32"), None)):
        with pytest.raises(KernelPolicyError, match="f32 cache is attended in f32"):
            prefill_tiles(a, 128, 4, policy, kv_dtype)


def test_sgmat_prefill_q_beyond_f16(device, monkeypatch):
    """q * scale past f16's 65504 (1e6 and 1e9 in one channel of some rows, beside ordinary and all-zero rows):
    the kernel stages each query row divided by a power of two s (row_scale.wgsl.j2's rule) and multiplies its
    scores by s, so nothing becomes inf. The keys are 0 in that channel, so the scores stay ordinary and the
    bound meaningful; without the scaling f16(q * scale) was inf there and inf * 0 NaN."""
    layout, N, chunks = (6, 2, 32), 40, [24, 16]
    as_sgmat_adapter(device, monkeypatch)
    q, k, v = make_qkv(N, 5, layout)
    k, v = k.astype(np.float16).astype(np.float32), v.astype(np.float16).astype(np.float32)
    qh, kh = q.reshape(N, 6, 32), k.reshape(N, 2, 32)
    qh[3, :, 5], qh[17, 2, 5], qh[30, 4, 5], qh[31, 1, 5] = 1e6, -1e9, 7e5, 3e5
    qh[8] = 0.0
    kh[:, :, 5] = 0.0
    ref = reference(q, k, v, 6, 2)
    bound = sgmat_bound(q, k, v, 6, 2)
    attn, got = run_emulated(device, KernelPolicy(prefill_attention_kernel="sgmat-f16"), q, k, v, layout, "f16", chunks)
    assert attn.plan.prefill.sgmat
    assert np.isfinite(got).all(), np.argwhere(~np.isfinite(got))[:4]
    err = np.abs(got - ref)
    assert (err <= bound).all(), f"max err {err.max():.3g}, bound there {bound.flat[err.argmax()]:.3g}"


def test_f32_cache_is_never_attended_in_f16(device, monkeypatch):
    """An f32 KV cache is asked for f32 attention (KernelPolicy.kv_cache="f32": CPU adapters, comparisons with
    transformers to 1e-5), which attention_prefill_sgmat (K and V rounded to f16, inf past 65504) cannot give:
    the planner takes the f32 forms for it even where "auto" would take the f16 kernel, and "sgmat-f16" over it
    is a KernelPolicyError. Checked with K and V of 1e5..1e9 in some channels (q 0 where K is large, so the
    scores stay ordinary), which the f16 kernel turned into inf and NaN."""
    layout, N, chunks = (6, 2, 32), 40, [24, 16]
    adapter = as_sgmat_adapter(device, monkeypatch, subgroups=False)  # the lanes form would need subgroups
    monkeypatch.setattr(planner, "SGMAT_ATTENTION_HEAD_DIMS", frozenset({32}))
    assert prefill_tiles(adapter, 32, 3, KernelPolicy(kv_cache="f16")).sgmat  # as "auto" would, given the choice
    q, k, v = make_qkv(N, 6, layout)
    qh, kh, vh = q.reshape(N, 6, 32), k.reshape(N, 2, 32), v.reshape(N, 2, 32)
    kh[:, :, 9] = np.linspace(-1e9, 1e9, N)[:, None]
    kh[5, 1, 10] = 3e5
    qh[:, :, 9:11] = 0.0
    vh[:, 0, 4] = 1e5 * (1 + np.arange(N))
    vh[7, 1, 20] = -2e6
    ref = reference(q, k, v, 6, 2)
    with emulating_any(device):
        cache = shuffled_cache(device, num_blocks=-(-N // 16) + 4, block_size=16, layout=layout, dtype="f32")
        h = Harness(device, cache, max_tokens=max(chunks), layout=layout)
        assert not h.attn.plan.prefill.sgmat
        got = h.run(0, q, k, v, chunks)
        with pytest.raises(KernelPolicyError, match="f32"):
            Harness(
                device,
                cache,
                max_tokens=max(chunks),
                layout=layout,
                policy=KernelPolicy(prefill_attention_kernel="sgmat-f16"),
            )
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=2e-4)


def test_bench_prefill_attention_tiling_flag(capsys):
    """bench --prefill-attention-tiling: PrefillTiling's fields in order, SGMAT, SGC and TWOPASS as booleans (so
    the planned tiling equals the planner's own), SPLITS, LAZY, and a clear error past its 10 fields while parsing (before a model
    loads)."""
    import argparse

    from webllm_py.bench import add_arguments, kernel_policy

    p = argparse.ArgumentParser()
    add_arguments(p)
    t = kernel_policy(p.parse_args(["--prefill-attention-tiling", "16,32,1,1,1,0,1"])).prefill_attention
    assert t == PrefillTiling(16, 32, sgmat=True, sgc=True) and t.sgmat is True and t.sgc is True
    assert kernel_policy(p.parse_args(["--prefill-attention-tiling", "16,32,4,2"])).prefill_attention == (
        PrefillTiling(16, 32, 4, 2)
    )
    t = kernel_policy(p.parse_args(["--prefill-attention-tiling", "16,32,1,1,1,0,1,1"])).prefill_attention
    assert t == PrefillTiling(16, 32, sgmat=True, sgc=True, twopass=True) and t.twopass is True
    t = kernel_policy(p.parse_args(["--prefill-attention-tiling", "16,32,1,1,1,0,1,0,4"])).prefill_attention
    assert t == PrefillTiling(16, 32, sgmat=True, sgc=True, splits=4) and t.twopass is False
    t = kernel_policy(p.parse_args(["--prefill-attention-tiling", "16,32,1,1,1,0,1,0,1,8"])).prefill_attention
    assert t == PrefillTiling(16, 32, sgmat=True, sgc=True, lazy=8)
    with pytest.raises(SystemExit):
        p.parse_args(["--prefill-attention-tiling", "16,32,1,1,1,0,1,1,4,8,9"])
    assert (
        "takes 2 to 10 integers (TQ,TK,LANES,ROWS,SGMAT,UNROLL,SGC,TWOPASS,SPLITS,LAZY), got 11"
        in capsys.readouterr().err
    )
