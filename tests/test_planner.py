"""planner.py: each op's kernel choice, one case per table row (pure functions: no device).

Each case gives an adapter, a weight and a policy and names the row it must land on; the cases'
rows cover every table's rows, so a row that can no longer be reached (or a new one without a case)
fails here. The kernels each row picks are checked against numpy in test_linear*.py, test_matvec_q4.py
and test_attention.py."""

from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace as NS

import dataclasses

import pytest

from webllm_py.formats.quants import GGMLType as T
from webllm_py.planner import (
    CPU_MATMUL_TABLE,
    CPU_TILING,
    GPU_MATMUL_TABLE,
    MATMUL_TABLE,
    MATVEC_TABLE,
    Q4_TILING,
    STAGED_TABLE,
    SWIFTSHADER_MATMUL_TABLE,
    SWIFTSHADER_Q8_TILING,
    SWIFTSHADER_TILING,
    Adapter,
    AttentionPlan,
    KernelPolicy,
    MatmulI8Tiling,
    MatmulRowsTiling,
    MatmulSgmatF16Tiling,
    MatmulSgmatTiling,
    MatmulTiling,
    MatvecTiling,
    PrefillTiling,
    StagedTiling,
    StepTiling,
    cpu_matmul_tiling,
    gpu_matmul_tiling,
    i8_tiling,
    kv_cache_dtype,
    prefill_chunk,
    parse_staged_tilings,
    plan_attention,
    plan_fused,
    plan_matmul,
    plan_matvec,
    sgmat_f16_tiling,
    sgmat_tiling,
    staged_tiling,
    team_subgroups,
)

GPU = Adapter(subgroups=True, subgroup_min=32, workgroup_storage=32768, storage_buffers=10)
CPU = Adapter(cpu=True)
SWIFTSHADER = Adapter(cpu=True, swiftshader=True, device_scope_barrier=False)
STAGED = STAGED_TABLE[-1].tiling  # 256 threads, 8 lanes, one row each

# (case, adapter, qtype, N, K, bias, policy, request) -> (row template, tiling, x_uniform)
# fmt: off
MATVEC_CASES = [
    ("staged 4-bit", GPU, T.Q4_0, 2048, 2048, False, KernelPolicy(), None, "matvec_q4s", STAGED, False),
    ("staged Q6_K, 8/6-bit long rows", GPU, T.Q6_K, 2048, 8192, False, KernelPolicy(), None, "matvec_q4s",
     StagedTiling(256, 16, 1), False),
    ("staged asked for on a CPU adapter", CPU, T.Q8_0, 64, 512, False, KernelPolicy(), StagedTiling(32, 2, 1),
     "matvec_q4s", StagedTiling(32, 2, 1), False),
    ("4-bit, K % 256 != 0", GPU, T.Q4_K, 64, 320, False, KernelPolicy(), None, "matvec_q4", Q4_TILING, False),
    ("4-bit, staged off by policy", GPU, T.Q4_1, 64, 2048, False, KernelPolicy(staged_matvec=False), None,
     "matvec_q4", Q4_TILING, False),
    ("4-bit, no packed dot products", Adapter(packed_dot=False), T.Q4_0, 64, 2048, False, KernelPolicy(), None,
     "matvec_q4", Q4_TILING, False),
    ("4-bit, x does not fit workgroup memory", Adapter(workgroup_storage=4096), T.Q4_0, 64, 8192, False,
     KernelPolicy(), None, "matvec_q4", Q4_TILING, False),
    ("staged asked for, K % 256 != 0: matvec_q4 with the policy's tiling", GPU, T.Q4_0, 8, 320, False,
     KernelPolicy(q4_tiling=MatvecTiling(32, 2)), StagedTiling(), "matvec_q4", MatvecTiling(32, 2), False),
    ("CPU adapter", CPU, T.Q4_0, 64, 2048, False, KernelPolicy(), None, "matvec_rows", CPU_TILING, True),
    ("CPU adapter, x too wide for a uniform", CPU, T.Q8_0, 64, 32768, False, KernelPolicy(), None,
     "matvec_rows", CPU_TILING, False),
    ("SwiftShader", SWIFTSHADER, T.Q4_1, 64, 576, False, KernelPolicy(), None, "matvec_rows", SWIFTSHADER_TILING,
     False),
    ("SwiftShader, Q8_0 (an LM head): 4 rows a lane", SWIFTSHADER, T.Q8_0, 49152, 576, False, KernelPolicy(), None,
     "matvec_rows", SWIFTSHADER_Q8_TILING, False),
    ("rows per thread asked for on a GPU", GPU, T.Q4_0, 64, 2048, False, KernelPolicy(),
     MatvecTiling(16, 2, False), "matvec_rows", MatvecTiling(16, 2, False), False),
    ("float weights on a GPU", GPU, T.F16, 64, 2048, False, KernelPolicy(), None, "matvec", MatvecTiling(), False),
    ("4-bit with a bias", GPU, T.Q4_0, 64, 2048, True, KernelPolicy(), None, "matvec", MatvecTiling(), False),
    ("Q8_0, staged off by policy: matvec_q4", GPU, T.Q8_0, 64, 2048, False, KernelPolicy(staged_matvec=False), None,
     "matvec_q4", Q4_TILING, False),
    ("Q6_K, staged off by policy", GPU, T.Q6_K, 64, 2048, False, KernelPolicy(staged_matvec=False), None,
     "matvec", MatvecTiling(), False),
    ("Q5_0 rows of 640 (Gemma-3's Q/K/V, gate/up): matvec_q4", GPU, T.Q5_0, 1024, 640, False, KernelPolicy(), None,
     "matvec_q4", Q4_TILING, False),
    ("Q8_0 head of 576 (SmolLM2's): matvec_q4", GPU, T.Q8_0, 49152, 576, False, KernelPolicy(), None,
     "matvec_q4", Q4_TILING, False),
    ("Q5_0, K % 64 != 0: the generic kernel", GPU, T.Q5_0, 64, 608, False, KernelPolicy(), None,
     "matvec", MatvecTiling(), False),
    ("the policy's generic tiling", GPU, T.Q5_1, 64, 2048, False, KernelPolicy(gpu_tiling=MatvecTiling(128, 4)),
     None, "matvec", MatvecTiling(128, 4), False),
]
# fmt: on


@pytest.mark.parametrize("case", MATVEC_CASES, ids=[c[0] for c in MATVEC_CASES])
def test_matvec_row(case):
    _, adapter, qtype, n, k, bias, policy, request, template, tiling, x_uniform = case
    plan = plan_matvec(adapter, qtype, n, k, bias, policy, request)
    assert (plan.template, plan.tiling, plan.x_uniform) == (template, tiling, x_uniform)
    assert plan.fusable == (template in ("matvec_q4s", "matvec_q4"))


def test_matvec_cases_cover_every_row():
    assert {c[8] for c in MATVEC_CASES} == {r.template for r in MATVEC_TABLE}


# (K, N, glu, qtype, group) -> the row of STAGED_TABLE it lands on
# fmt: off
STAGED_CASES = [((8192, 2048, False, T.Q8_0, False), 0), ((14336, 4096, False, T.Q6_K, False), 0),
                ((4096, 14336, True, T.Q4_0, False), 1), ((4096, 4096, False, T.Q4_0, True), 2),
                ((2048, 2048, False, T.Q6_K, True), 2), ((8192, 2048, False, T.Q4_0, False), 3),
                ((16384, 4096, False, None, False), 3), ((2048, 2048, True, T.Q4_0, False), 4),
                ((4096, 4096, False, T.Q6_K, False), 4), ((1024, 1024, False, T.Q4_0, True), 4)]
# fmt: on


@pytest.mark.parametrize("args,row", STAGED_CASES)
def test_staged_row(args, row):
    K, N, glu, q, group = args
    assert staged_tiling(K, glu=glu, N=N, qtype=q, group=group) == STAGED_TABLE[row].tiling


def test_table_cases_cover_every_row():
    assert {r for _, r in STAGED_CASES} == set(range(len(STAGED_TABLE)))
    assert {r for _, r in GPU_MATMUL_CASES} == set(range(len(GPU_MATMUL_TABLE)))
    assert {r for _, r in CPU_MATMUL_CASES} == set(range(len(CPU_MATMUL_TABLE)))


def test_staged_policy_overrides_by_op_kind():
    """bench's --staged-tiling: glu before tall before k<K> before wide before all."""
    spec = parse_staged_tilings("64,4,1;glu=128,8,1;tall=256,8,2;k8192=256,32,1,1;wide=256,16,1")
    assert spec[0] == ("all", StagedTiling(64, 4, 1)) and spec[3] == ("k8192", StagedTiling(256, 32, 1, True))
    p = KernelPolicy(staged_tilings=spec)
    assert staged_tiling(8192, glu=True, N=200000, policy=p) == StagedTiling(128, 8, 1)
    assert staged_tiling(8192, N=200000, policy=p) == StagedTiling(256, 8, 2)
    assert staged_tiling(8192, N=2048, policy=p) == StagedTiling(256, 32, 1, True)
    assert staged_tiling(16384, N=2048, policy=p) == StagedTiling(256, 16, 1)
    assert staged_tiling(2048, N=2048, policy=p) == StagedTiling(64, 4, 1)
    assert parse_staged_tilings("") == () and staged_tiling(2048, policy=KernelPolicy()) == STAGED


def test_staged_planes_auto():
    """Two int8 planes of x for models narrower than 1024 (SmolLM2 576, Gemma-3-270M 640), the tilings' own above."""
    from webllm_py.planner import staged_planes_auto

    assert staged_planes_auto(576) == staged_planes_auto(1023) == 2
    assert staged_planes_auto(1024) is None and staged_planes_auto(4096) is None


def test_prefill_planes_auto():
    """matmul_i8's x planes follow the decode's width rule: two below 1024 (the real small models' 2e-3), one from
    1024; build_model resolves them unless the policy names them."""
    from webllm_py.models import families
    from webllm_py.planner import prefill_planes_auto

    assert prefill_planes_auto(576) == prefill_planes_auto(1023) == 2
    assert prefill_planes_auto(1024) == prefill_planes_auto(4096) == 1
    seen = []

    class Family:
        @staticmethod
        def model(device, cfg, weights, cache, max_tokens, policy):
            seen.append(policy)

    for dim, policy, want in (
        (576, KernelPolicy(), 2),
        (2048, KernelPolicy(), 1),
        (2048, KernelPolicy(prefill_planes=2), 2),
    ):
        cfg = NS(arch="fake", dim=dim)
        with pytest.MonkeyPatch.context() as mp:
            mp.setitem(families.FAMILIES, "fake", Family)
            families.build_model(None, cfg, None, None, 8, policy)
        assert seen[-1].prefill_planes == want
        assert i8_tiling(GPU, T.Q4_0, dim, 4096, seen[-1]).planes == want


def test_staged_planes():
    """Two int8 planes of x: --staged-tiling's fifth field, or KernelPolicy.staged_planes on every staged
    tiling (table rows and overrides); 17 more vec4 of workgroup memory per unit, so where the adapter's
    limit is 32 KB the 8B's w_down (K 14336) falls back to matvec_q4 while the 1B's (8192) keeps the kernel."""
    assert parse_staged_tilings("256,8,1,1,2")[0] == ("all", StagedTiling(256, 8, 1, True, 2))
    assert parse_staged_tilings("256,8,1")[0][1].planes == 1
    with pytest.raises(ValueError, match="planes"):
        StagedTiling(planes=3)
    two = KernelPolicy(staged_planes=2)
    assert staged_tiling(8192, policy=two) == replace(staged_tiling(8192), planes=2)
    assert staged_tiling(4096, glu=True, policy=two) == replace(STAGED_TABLE[1].tiling, planes=2)
    over = KernelPolicy(staged_tilings=parse_staged_tilings("64,4,1"), staged_planes=2)
    assert staged_tiling(2048, policy=over) == StagedTiling(64, 4, 1, planes=2)
    t = staged_tiling(2048)
    assert replace(t, planes=2).shared_bytes(2048) - t.shared_bytes(2048) == 8 * 17 * 16
    a32 = replace(GPU, workgroup_storage=32768)
    assert plan_matvec(a32, T.Q4_0, 4096, 14336).template == "matvec_q4s"
    assert plan_matvec(a32, T.Q4_0, 4096, 14336, policy=two).template == "matvec_q4"
    assert plan_matvec(a32, T.Q4_0, 2048, 8192, policy=two).tiling.planes == 2


def test_fused_glu_tiling():
    """A fused gate/up group takes the glu row where its members have the default tiling and it fits."""
    K, N = 4096, 14336
    plan = plan_matvec(GPU, T.Q4_0, N, K)
    assert plan_fused(GPU, plan, T.Q4_0, N, K) == STAGED_TABLE[1].tiling != plan.tiling
    asked = plan_matvec(GPU, T.Q4_0, N, K, request=StagedTiling(64, 4, 1))
    assert plan_fused(GPU, asked, T.Q4_0, N, K) == StagedTiling(64, 4, 1)
    # the glu tiling's 128 threads x 4 accumulators need less workgroup memory than 256 x 4: a limit
    # between the two keeps the default's (planned on a roomier adapter) instead
    small = Adapter(workgroup_storage=STAGED_TABLE[1].tiling.shared_bytes(K) - 4)
    assert plan_fused(small, plan, T.Q4_0, N, K) == plan.tiling
    q4 = plan_matvec(GPU, T.Q4_0, N, K, policy=KernelPolicy(staged_matvec=False))
    assert plan_fused(GPU, q4, T.Q4_0, N, K) == Q4_TILING


def test_fused_group_tiling():
    """A fused Q/K/V group (several matrices, no GLU) takes the group row (16 rows a workgroup) where its members
    have the default tiling, rows are >= 2048 wide and it fits; a "qkv" override replaces it; prestaged and the
    planes follow the policy as the members' own tiling does."""
    K, N = 4096, 4096
    plan = plan_matvec(GPU, T.Q4_0, N, K)
    t = plan_fused(GPU, plan, T.Q4_0, N, K, glu=False)
    assert t == STAGED_TABLE[2].tiling == StagedTiling(128, 8, 1) != plan.tiling
    assert t.rows_per_group(K) == 16
    narrow = plan_matvec(GPU, T.Q4_0, 1024, 1024)
    assert plan_fused(GPU, narrow, T.Q4_0, 1024, 1024, glu=False) == narrow.tiling
    pre = KernelPolicy(prestage=True, staged_planes=2)
    t = plan_fused(GPU, plan_matvec(GPU, T.Q4_0, N, K, policy=pre), T.Q4_0, N, K, pre, glu=False)
    assert (t.wg, t.prestaged, t.planes) == (128, True, 2)
    asked = KernelPolicy(staged_tilings=(("qkv", StagedTiling(256, 8, 1)),))
    assert plan_fused(GPU, plan_matvec(GPU, T.Q4_0, N, K, policy=asked), T.Q4_0, N, K, asked, glu=False) == (
        StagedTiling(256, 8, 1)
    )
    small = Adapter(workgroup_storage=STAGED_TABLE[2].tiling.shared_bytes(K) - 4)
    assert plan_fused(small, plan, T.Q4_0, N, K, glu=False) == plan.tiling


def test_glu_emit_tiling():
    """KernelPolicy.glu_emit (off by default): a fused gate/up's tiling takes 32 rows a workgroup (one block of
    w_down's x, which its epilogue writes): the glu row's lanes and rows with as many threads as that takes;
    not where its output is no whole number of 256-blocks, nor over an explicit glu override; a tiling that
    has 32 rows already, or that no workgroup of <= 256 threads gives 32 rows, unchanged."""
    from webllm_py.planner import glu_emit_auto, glu_emit_tiling

    K, N = 4096, 14336
    on = KernelPolicy(glu_emit=True)
    assert not glu_emit_auto(KernelPolicy()) and glu_emit_auto(on)
    plan = plan_matvec(GPU, T.Q4_0, N, K, policy=on)
    t = plan_fused(GPU, plan, T.Q4_0, N, K, on)
    assert t == replace(STAGED_TABLE[1].tiling, wg=256) and t.rows_per_group(K) == 32
    assert t.emit_refusal(K, [N, N], False, "silu") is None
    assert STAGED_TABLE[1].tiling.emit_refusal(K, [N, N], False, "silu") is not None  # 16 rows: today's
    assert plan_fused(GPU, plan, T.Q4_0, N + 32, K, on) == STAGED_TABLE[1].tiling  # N % 256
    glu16 = KernelPolicy(glu_emit=True, staged_tilings=(("glu", StagedTiling(128, 8, 1)),))
    plan16 = plan_matvec(GPU, T.Q4_0, N, K, policy=glu16)
    assert plan_fused(GPU, plan16, T.Q4_0, N, K, glu16) == StagedTiling(128, 8, 1)
    assert glu_emit_tiling(StagedTiling(128, 4, 1), K) == StagedTiling(128, 4, 1)  # 32 rows already
    assert glu_emit_tiling(StagedTiling(64, 8, 2), K) == StagedTiling(128, 8, 2)
    assert glu_emit_tiling(StagedTiling(256, 8, 1), 256) == StagedTiling(32, 8, 1)  # one lane at K = 256
    assert glu_emit_tiling(StagedTiling(128, 16, 1), K) == StagedTiling(128, 16, 1)  # 512 threads: no


# fmt: off
GPU_MATMUL_CASES = [(14336, 0), (8192, 0), (4096, 1), (8191, 1), (2048, 2), (64, 2)]
CPU_MATMUL_CASES = [(T.Q4_K, 0), (T.Q6_K, 0), (T.IQ4_XS, 0), (T.Q4_0, 1), (T.Q8_0, 1), (T.IQ4_NL, 1), (T.F32, 1),
                    (T.Q4_1, 2), (T.F16, 2)]
# fmt: on
F32 = KernelPolicy(prefill="f32")


@pytest.mark.parametrize("n,row", GPU_MATMUL_CASES)
def test_gpu_matmul_row(n, row):
    assert gpu_matmul_tiling(n) == GPU_MATMUL_TABLE[row][1]
    plan = plan_matmul(GPU, T.Q5_K, n, 4096)  # a type matmul_i8 does not read
    assert (plan.template, plan.tiling) == ("matmul", GPU_MATMUL_TABLE[row][1])


@pytest.mark.parametrize("qtype,row", CPU_MATMUL_CASES)
def test_cpu_matmul_row(qtype, row):
    assert cpu_matmul_tiling(qtype) == CPU_MATMUL_TABLE[row][1]
    plan = plan_matmul(CPU, qtype, 4096, 512, F32)
    assert (plan.template, plan.tiling) == ("matmul_rows", CPU_MATMUL_TABLE[row][1])


def test_swiftshader_matmul_rows():
    """SwiftShader: Q4_1 unpacked once per row, its rows in a loop (its own row), Q4_0 and Q8_0 rows in a
    loop, other types CPU_MATMUL_TABLE's; K at run time."""
    q41 = plan_matmul(SWIFTSHADER, T.Q4_1, 1536, 576, F32).tiling
    assert q41 == replace(SWIFTSHADER_MATMUL_TABLE[0][1], shape_at_run_time=True) and q41.dequant and q41.row_loop
    for qtype in (T.Q4_0, T.Q8_0):
        tiling = plan_matmul(SWIFTSHADER, qtype, 1536, 576, F32).tiling
        assert tiling == replace(SWIFTSHADER_MATMUL_TABLE[1][1], shape_at_run_time=True) and tiling.row_loop
    q6k = plan_matmul(SWIFTSHADER, T.Q6_K, 1536, 576, F32).tiling
    assert q6k == replace(CPU_MATMUL_TABLE[0][1], shape_at_run_time=True)
    lavapipe = plan_matmul(CPU, T.Q4_1, 1536, 576, F32).tiling  # lavapipe keeps its kernel
    assert not lavapipe.dequant and not lavapipe.row_loop


def test_swiftshader_prefill_attention_loops():
    """SwiftShader: attention_prefill's CPU form walks q and acc one vec4 a pass; lavapipe keeps it unrolled."""
    from webllm_py.planner import SWIFTSHADER_PREFILL_UNROLL, PrefillTiling, prefill_tiles

    assert prefill_tiles(SWIFTSHADER, 64, 3).unroll == SWIFTSHADER_PREFILL_UNROLL == 1
    assert prefill_tiles(CPU, 64, 3).unroll == 0
    with pytest.raises(ValueError, match="unroll 3"):
        prefill_tiles(CPU, 64, 3, KernelPolicy(prefill_attention=PrefillTiling(unroll=3)))


# (adapter, qtype, N, K, policy) -> matmul_i8's tiling, or None (the rows below it)
# fmt: off
I8_CASES = [
    ("GPU, wide", GPU, T.Q4_1, 14336, 4096, KernelPolicy(), MatmulI8Tiling(stage=True, kb=2, pf=True, planes=2)),
    ("GPU, narrow", GPU, T.Q4_0, 2048, 2048, KernelPolicy(), MatmulI8Tiling(tm=128, rm=8, kb=1, pf=True)),
    ("GPU, K / 32 odd: one block a step", GPU, T.Q8_0, 64, 96, KernelPolicy(), MatmulI8Tiling(tm=128, rm=8, kb=1, pf=True)),
    ("GPU, one plane: the 128 x 64 tile, two blocks a step", GPU, T.Q4_K, 64, 256, KernelPolicy(prefill="i8"),
     MatmulI8Tiling(tm=128, rm=8, kb=2, pf=True, planes=1)),
    ("GPU, one plane by the model's width", GPU, T.Q4_0, 14336, 4096, KernelPolicy(prefill_planes=1),
     MatmulI8Tiling(tm=128, rm=8, kb=2, pf=True, planes=1)),
    ("GPU, one plane, K / 32 odd", GPU, T.Q8_0, 64, 96, KernelPolicy(prefill="i8"), MatmulI8Tiling(tm=128, rm=8, kb=1, pf=True, planes=1)),
    ("GPU, one plane, 15 KiB not there: the two-plane rule's tile", Adapter(workgroup_storage=12288), T.Q4_0, 4096, 4096,
     KernelPolicy(prefill="i8"), MatmulI8Tiling(kb=2, pf=True, planes=1)),
    ("GPU, i8x2 over the width's one plane", GPU, T.Q4_0, 64, 64, KernelPolicy(prefill="i8x2", prefill_planes=1),
     MatmulI8Tiling(tm=128, rm=8, kb=1, pf=True, planes=2)),
    ("GPU, the policy's tile", GPU, T.Q4_0, 64, 96, KernelPolicy(i8_tiling=MatmulI8Tiling(tm=32, tn=32, rm=2, rn=2, kb=4)),
     MatmulI8Tiling(tm=32, tn=32, rm=2, rn=2, kb=1)),
    ("CPU lanes", CPU, T.Q8_0, 64, 256, KernelPolicy(), MatmulI8Tiling(stage=False, wg=8, rm=4, rn=8)),
    ("CPU, Q4_1 forced", CPU, T.Q4_1, 64, 64, KernelPolicy(prefill="i8x2"), MatmulI8Tiling(stage=False, rn=8)),
    ("CPU, Q4_1 by default: matmul_rows", CPU, T.Q4_1, 64, 64, KernelPolicy(), None),
    ("CPU, Q4_1, sgmat asked for (none here): as auto", CPU, T.Q4_1, 64, 64, KernelPolicy(prefill="sgmat"), None),
    ("Q4_K rows of part of a super-block", GPU, T.Q4_K, 64, 96, KernelPolicy(), None),
    ("a type matmul_i8 does not read", GPU, T.Q5_K, 64, 256, KernelPolicy(), None),
    ("GPU, Q6_K (Q4_K_M's attn_v, ffn_down)", GPU, T.Q6_K, 64, 256, KernelPolicy(), MatmulI8Tiling(tm=128, rm=8, kb=1, pf=True)),
    ("Q6_K rows of part of a super-block", GPU, T.Q6_K, 64, 96, KernelPolicy(), None),
    ("CPU, Q6_K by default: matmul_rows", CPU, T.Q6_K, 64, 256, KernelPolicy(), None),
    ("no packed dot products", Adapter(packed_dot=False), T.Q4_0, 64, 64, KernelPolicy(), None),
    ("f32 by policy", GPU, T.Q4_0, 64, 64, F32, None),
]
# fmt: on


@pytest.mark.parametrize("case", I8_CASES, ids=[c[0] for c in I8_CASES])
def test_i8_row(case):
    _, adapter, qtype, n, k, policy, tiling = case
    assert i8_tiling(adapter, qtype, k, n, policy) == tiling
    plan = plan_matmul(adapter, qtype, n, k, policy)
    assert plan.template == ("matmul_i8" if tiling else "matmul_rows" if adapter.cpu else "matmul")


# Dawn with allow_unsafe_apis on an H200: subgroup matrices, 48 KiB of workgroup memory
SGMAT = Adapter(subgroups=True, subgroup_min=32, workgroup_storage=49152, invocations=1024, subgroup_matrix=True)
# (adapter, qtype, N, K, policy) -> matmul_sgmat's tiling, or None (then matmul_i8, its fallback, or below)
# fmt: off
SG = KernelPolicy(prefill="sgmat")
SGMAT_CASES = [
    ("tensor cores, Q4_0", SGMAT, T.Q4_0, 4096, 4096, SG, MatmulSgmatTiling()),
    ("tensor cores, Q8_0, K / 32 odd: one block a step", SGMAT, T.Q8_0, 64, 96, SG, MatmulSgmatTiling(kb=1)),
    ("the policy's tile", SGMAT, T.Q4_0, 64, 256, KernelPolicy(prefill="sgmat", sgmat_tiling=MatmulSgmatTiling(sg_n=4, tj=1)),
     MatmulSgmatTiling(sg_n=4, tj=1)),
    ("not by default (slower than matmul_i8 on the H200)", SGMAT, T.Q4_0, 4096, 4096, KernelPolicy(), None),
    ("a type it does not read: matmul_i8", SGMAT, T.Q4_K, 4096, 4096, SG, None),
    ("matmul_i8 forced by policy", SGMAT, T.Q4_0, 4096, 4096, KernelPolicy(prefill="i8x2"), None),
    ("no subgroup matrices (default Chrome, native wgpu, lavapipe)", GPU, T.Q4_0, 4096, 4096, SG, None),
    ("tiles past the workgroup memory", Adapter(subgroup_matrix=True), T.Q4_0, 4096, 4096, SG, None),
]
# fmt: on


@pytest.mark.parametrize("case", SGMAT_CASES, ids=[c[0] for c in SGMAT_CASES])
def test_sgmat_row(case):
    _, adapter, qtype, n, k, policy, tiling = case
    assert sgmat_tiling(adapter, qtype, k, n, policy) == tiling
    plan = plan_matmul(adapter, qtype, n, k, policy)
    assert plan.template == ("matmul_sgmat" if tiling else "matmul_i8")
    assert tiling is None or plan.tiling == tiling


# ... with the f16 config too (Dawn on the H200 with vulkan_enable_f16_on_nvidia; Apple, Intel, AMD by default)
SGMAT16 = dataclasses.replace(SGMAT, f16=True, f16_subgroup_matrix=True)
SG16 = KernelPolicy(prefill="sgmat-f16")
# the planner's two tiles (SGMAT_F16_TILES): 128x128 and 64x64, both with the next step's loads in flight
# the planned tiles stage x by copies (x16) and load matrices at constant offsets (sgc)
BIG16 = MatmulSgmatF16Tiling(sg_n=4, ti=4, pf=True, x16=True, sgc=True)
SMALL16 = MatmulSgmatF16Tiling(pf=True, x16=True, sgc=True)
# (adapter, qtype, N, K, policy) -> matmul_sgmat_f16's tiling, or None (then the rows below it)
# fmt: off
SGMAT_F16_CASES = [
    ("f16 tiles, Q4_0: 128 workgroups of 128x128, one wave", SGMAT16, T.Q4_0, 4096, 4096, SG16, BIG16),
    ("f16 tiles, Q4_K super-blocks: 64 of 128x128 leave half the SMs idle", SGMAT16, T.Q4_K, 2048, 8192, SG16,
     SMALL16),
    ("6144 rows: 128x128's two waves, the second 45% full, still beat 64x64's three", SGMAT16, T.Q4_0, 6144,
     4096, SG16, BIG16),
    ("3072 rows: 96 of 128x128 in one wave beat 64x64's second 45% full", SGMAT16, T.Q4_0, 3072, 2048, SG16,
     BIG16),
    ("128x128 past the workgroup memory", dataclasses.replace(SGMAT16, workgroup_storage=32768), T.Q4_0, 4096,
     4096, SG16, SMALL16),
    ("f16 tiles, Q4_1", SGMAT16, T.Q4_1, 64, 64, SG16, BIG16),
    ("Q8_0, K / 32 odd: one block a step", SGMAT16, T.Q8_0, 64, 96, SG16, dataclasses.replace(BIG16, kb=1)),
    ("the policy's tile", SGMAT16, T.Q4_0, 64, 256,
     KernelPolicy(prefill="sgmat-f16", sgmat_f16_tiling=MatmulSgmatF16Tiling(sg_n=4, tj=1, db=False)),
     MatmulSgmatF16Tiling(sg_n=4, tj=1, db=False)),
    ("by default where offered", SGMAT16, T.Q4_0, 4096, 4096, KernelPolicy(), BIG16),
    ("matmul_i8 forced by policy", SGMAT16, T.Q4_0, 4096, 4096, KernelPolicy(prefill="i8x2"), None),
    ("the int8 subgroup matrices asked for", SGMAT16, T.Q4_0, 4096, 4096, SG, None),
    ("f16 tiles, Q6_K super-blocks", SGMAT16, T.Q6_K, 2048, 8192, SG16, SMALL16),
    ("a type it does not read", SGMAT16, T.Q5_K, 4096, 4096, SG16, None),
    ("Q6_K rows of part of a super-block", SGMAT16, T.Q6_K, 64, 96, SG16, None),
    ("Q4_K rows of part of a super-block", SGMAT16, T.Q4_K, 64, 96, SG16, None),
    ("i8 subgroup matrices only (Dawn on NVIDIA without the f16 toggle)", SGMAT, T.Q4_0, 4096, 4096, SG16, None),
    ("no subgroup matrices (default Chrome, native wgpu, lavapipe)", GPU, T.Q4_0, 4096, 4096, SG16, None),
    ("tiles past the workgroup memory", Adapter(f16=True, f16_subgroup_matrix=True), T.Q4_0, 4096, 4096, SG16,
     None),
    ("split-K asked for", SGMAT16, T.Q4_0, 4096, 4096, KernelPolicy(sgmat_f16_splits=2),
     dataclasses.replace(BIG16, splits=2)),
    ("split-K: at most one slice a K step (96 columns: 3 steps of one block)", SGMAT16, T.Q8_0, 64, 96,
     KernelPolicy(sgmat_f16_splits=8), dataclasses.replace(BIG16, kb=1, splits=3)),
    ("split-K: partial tiles [splits, 512, N] within 128 MiB", SGMAT16, T.Q4_0, 28672, 4096,
     KernelPolicy(sgmat_f16_splits=4), dataclasses.replace(BIG16, splits=2)),
    # 4 x 4 subgroups (512 threads) of one tile each: 64x64 in 34 KiB; the threads decide where it runs
    ("the policy's 4x4 subgroups: 512 threads", SGMAT16, T.Q4_0, 4096, 4096,
     KernelPolicy(sgmat_f16_tiling=MatmulSgmatF16Tiling(sg_m=4, sg_n=4, ti=1, tj=1)),
     MatmulSgmatF16Tiling(sg_m=4, sg_n=4, ti=1, tj=1)),
    ("the policy's 4x4 subgroups past the adapter's 256 threads", dataclasses.replace(SGMAT16, invocations=256),
     T.Q4_0, 4096, 4096, KernelPolicy(sgmat_f16_tiling=MatmulSgmatF16Tiling(sg_m=4, sg_n=4, ti=1, tj=1)), None),
    ("split-K never (the A/B's old planner)", SGMAT16, T.Q4_0, 4096, 4096,
     KernelPolicy(sgmat_f16_tiling=dataclasses.replace(BIG16, splits=4), sgmat_f16_splits=1), BIG16),
]
# fmt: on


@pytest.mark.parametrize("case", SGMAT_F16_CASES, ids=[c[0] for c in SGMAT_F16_CASES])
def test_sgmat_f16_row(case):
    _, adapter, qtype, n, k, policy, tiling = case
    assert sgmat_f16_tiling(adapter, qtype, k, n, policy) == tiling
    plan = plan_matmul(adapter, qtype, n, k, policy)
    # where it does not run: matmul_sgmat if asked for, else as without it (matmul_i8, matmul)
    fallback = plan_matmul(adapter, qtype, n, k, policy if policy.prefill == "sgmat" else KernelPolicy(prefill="i8x2"))
    assert plan.template == ("matmul_sgmat_f16" if tiling else fallback.template)
    assert tiling is None or plan.tiling == tiling


def test_matmul_request():
    assert plan_matmul(GPU, T.Q4_0, 64, 64, request=MatmulRowsTiling(4, 2, 3)).template == "matmul_rows"
    assert plan_matmul(CPU, T.Q4_0, 64, 64, request=MatmulTiling(tm=16)).tiling == MatmulTiling(tm=16)
    assert plan_matmul(CPU, T.Q6_K, 64, 256, request=MatmulI8Tiling()).template == "matmul_i8"
    assert plan_matmul(GPU, T.Q4_0, 64, 64, request=MatmulSgmatTiling()).template == "matmul_sgmat"
    assert plan_matmul(GPU, T.Q4_0, 64, 64, request=MatmulSgmatF16Tiling()).template == "matmul_sgmat_f16"
    assert {r.template for r in MATMUL_TABLE} == {
        "matmul_sgmat_f16",
        "matmul_sgmat",
        "matmul_i8",
        "matmul_rows",
        "matmul",
    }
    with pytest.raises(ValueError, match="prefill"):
        KernelPolicy(prefill="int4")
    with pytest.raises(ValueError, match="sgmat_f16_splits"):
        KernelPolicy(sgmat_f16_splits=0)


def test_kv_cache_policy():
    """KernelPolicy.kv_cache, and bench's --kv-cache that sets it."""
    with pytest.raises(ValueError, match="kv_cache must be auto, f32, f16 or f16x2"):
        KernelPolicy(kv_cache="f8")
    import argparse

    from webllm_py.bench import add_arguments, kernel_policy

    p = argparse.ArgumentParser()
    add_arguments(p)
    flags = ([], ["--kv-cache", "f32"], ["--kv-cache", "f16x2"])
    assert [kernel_policy(p.parse_args(a)).kv_cache for a in flags] == ["auto", "f32", "f16x2"]


def test_bench_sgmat_f16_tiling_flag(capsys):
    """bench --sgmat-f16-tiling: MatmulSgmatF16Tiling's fields in order, DB, PF, X16 and SGC as booleans (so the
    planned tiling equals the planner's own), and a clear argparse error past SGC's 9 fields or short of DB's 6."""
    import argparse

    from webllm_py.bench import add_arguments, kernel_policy

    p = argparse.ArgumentParser()
    add_arguments(p)
    t = kernel_policy(p.parse_args(["--sgmat-f16-tiling", "2,4,4,2,2,0,1,1,1"])).sgmat_f16_tiling
    assert t == BIG16 and (t.db, t.pf, t.x16, t.sgc) == (False, True, True, True)
    assert kernel_policy(p.parse_args(["--sgmat-f16-tiling", "1,2,2,1,1,1"])).sgmat_f16_tiling == (
        MatmulSgmatF16Tiling(sg_m=1, sg_n=2, ti=2, tj=1, kb=1, db=True)
    )
    for fields in ("2,4,4,2,2,0,1,1,1,1", "2,4,4,2,2"):
        with pytest.raises(SystemExit):
            p.parse_args(["--sgmat-f16-tiling", fields])
        assert "takes 6 to 9 integers (SG_M,SG_N,TI,TJ,KB,DB,PF,X16,SGC)" in capsys.readouterr().err


@pytest.mark.parametrize(
    "flag, value, message",
    [
        ("--matvec-tiling", "64,4,2", "takes 2 integers (WG,ROWS), got 3"),  # was a ValueError after loading
        ("--i8-tiling", "64,64,4", "takes 4 to 6 integers (TM,TN,RM,RN,KB,PF), got 3"),  # was a TypeError after
        ("--step-tiling", "128,32,32,32,1", "takes 1 to 4 integers (WG,CHUNK,SPLITS,MIN_SPLIT), got 5"),
    ],
)
def test_bench_tiling_flags_count_their_fields_while_parsing(capsys, flag, value, message):
    """Each tiling flag's field count is checked by argparse, before a model loads (one rule: bench._fields)."""
    import argparse

    from webllm_py.bench import add_arguments

    p = argparse.ArgumentParser()
    add_arguments(p)
    with pytest.raises(SystemExit):
        p.parse_args([flag, value])
    assert message in capsys.readouterr().err


def test_attention_plan():
    """Fused single-token step on GPUs with a device-scope storageBarrier (native Vulkan), 10 storage bindings and head_dim % 8 == 0;
    split-K decode elsewhere; the policy's choices; prefill tiles within the adapter's limits."""
    gpu = plan_attention(GPU, 32, 8, 128)
    assert isinstance(gpu, AttentionPlan) and gpu.fused and gpu.step == StepTiling(splits=32)
    assert (
        plan_attention(GPU, 9, 3, 64).step == StepTiling(splits=32) and plan_attention(GPU, 8, 1, 256).step.splits == 32
    )
    assert plan_attention(GPU, 64, 16, 64).step.splits == 16
    assert not plan_attention(GPU, 32, 8, 12).fused  # head_dim % 8
    assert gpu.fused and gpu.step_merge  # device-scope barrier: the step merges its slices, one dispatch
    # without one (Dawn/Tint): the step + attention_combine (9 storage bindings: out is the combine's)
    safe = plan_attention(Adapter(device_scope_barrier=False, storage_buffers=9), 32, 8, 128)
    assert safe.fused and not safe.step_merge and safe.step == StepTiling(splits=32)
    assert not plan_attention(Adapter(device_scope_barrier=False, storage_buffers=8), 32, 8, 128).fused
    assert not plan_attention(Adapter(device_scope_barrier=False, storage_buffers=10), 32, 8, 12).fused
    assert not plan_attention(Adapter(device_scope_barrier=False, cpu=True, storage_buffers=10), 32, 8, 128).fused
    assert not plan_attention(Adapter(storage_buffers=8), 32, 8, 128).fused
    nine = plan_attention(Adapter(storage_buffers=9), 32, 8, 128)  # device scope, but no room for the scratch
    assert not nine.fused
    forced = plan_attention(Adapter(storage_buffers=9), 32, 8, 128, KernelPolicy(step_merge=False))
    assert forced.fused and not forced.step_merge
    cpu = plan_attention(CPU, 9, 3, 64)
    assert not cpu.fused and (cpu.decode_wg, cpu.splits, cpu.full_chunks, cpu.combine_wg) == (64, 1, False, 64)
    assert plan_attention(CPU, 4, 2, 32).splits == 4
    unfused = plan_attention(GPU, 32, 8, 128, KernelPolicy(fused_attention=False, step_tiling=StepTiling(64)))
    assert not unfused.fused and unfused.step == StepTiling(64)
    assert (unfused.decode_wg, unfused.splits, unfused.full_chunks, unfused.combine_wg) == (32, 32, True, 32)
    assert plan_attention(CPU, 32, 8, 128, fused=True).fused
    with pytest.raises(ValueError, match="head_dim % 8"):
        plan_attention(GPU, 32, 8, 12, fused=True)
    assert plan_attention(replace(GPU, subgroups=False), 32, 8, 128).prefill == PrefillTiling(16, 32, 1)
    assert (
        plan_attention(Adapter(invocations=64, workgroup_storage=16384), 32, 4, 256).prefill.tq,
        plan_attention(Adapter(workgroup_storage=16384), 32, 4, 256).prefill.tk,
    ) == (8, 8)


def test_prefill_attention_lanes():
    """With subgroups of 32, attention_prefill splits a query row over 8 lanes (head_dim 128) or 4 (64,
    80): ~128 threads a workgroup, so a 128-token chunk of Llama-3.1-8B (32 heads, 8 kv) makes
    128 / 4 * 8 = 256 workgroups; lanes must fit the smallest subgroup and divide head_dim / 4."""
    sg = GPU
    assert plan_attention(sg, 32, 8, 128).prefill == PrefillTiling(4, 32, 8)
    assert plan_attention(sg, 32, 8, 64).prefill == PrefillTiling(8, 32, 4)  # Llama-3.2-1B
    assert plan_attention(sg, 32, 32, 80).prefill == PrefillTiling(16, 32, 4)  # Phi-2: 20 vec4s, L 4
    assert plan_attention(sg, 14, 2, 64).prefill == PrefillTiling(4, 32, 4)  # group 7: 112 threads
    assert plan_attention(sg, 8, 8, 24).prefill.lanes == 1  # 6 vec4s: no power-of-two split
    assert plan_attention(replace(sg, subgroup_min=4), 32, 8, 128).prefill == PrefillTiling(8, 32, 4)
    assert plan_attention(replace(sg, subgroup_min=0), 32, 8, 128).prefill.lanes == 1  # unknown size
    assert plan_attention(replace(sg, cpu=True), 32, 8, 128).prefill.lanes == 1
    # 16 KiB of workgroup memory: tiles of 16 positions at head_dim 128
    assert plan_attention(replace(sg, workgroup_storage=16384), 32, 8, 128).prefill.tk == 16
    forced = KernelPolicy(prefill_attention=PrefillTiling(2, 16, 8))
    assert plan_attention(sg, 32, 8, 128, forced).prefill == PrefillTiling(2, 16, 8)
    with pytest.raises(ValueError, match="lanes must divide"):
        plan_attention(sg, 32, 8, 80, forced)
    with pytest.raises(ValueError, match="subgroups feature"):
        plan_attention(replace(sg, subgroups=False), 32, 8, 128, forced)
    assert plan_attention(sg, 32, 8, 128, KernelPolicy(prefill_attention=PrefillTiling(8, 32, 8, 2))).prefill.rows == 2
    with pytest.raises(ValueError, match="must divide tq"):
        plan_attention(sg, 24, 8, 128, KernelPolicy(prefill_attention=PrefillTiling(1, 32, 8, 2)))  # 3 rows
    with pytest.raises(ValueError, match="rows 1 where lanes is"):
        KernelPolicy(prefill_attention=PrefillTiling(16, 32, 1, 2))
    with pytest.raises(ValueError, match="power of two"):
        KernelPolicy(prefill_attention=PrefillTiling(4, 32, 6))


def test_adapter_of_device():
    """Adapter.of reads a device's info, limits and features (a browser's WGSL language features)."""
    info = NS(backend="native", is_fallback=False, architecture="", description="NVIDIA H200", api="vulkan")
    dev = NS(
        info=info,
        limits={"max_compute_workgroup_storage_size": 49152},
        has_subgroups=True,
        raw=NS(adapter=NS(info={"vendor_id": 0x10DE, "stackgroup_min_size": 4})),
    )
    a = Adapter.of(dev)
    assert (a.cpu, a.device_scope_barrier, a.packed_dot, a.subgroups, a.subgroup_min, a.workgroup_storage) == (
        False,
        True,
        True,
        True,
        32,
        49152,
    )
    sw = NS(
        info=NS(backend="browser", is_fallback=True, architecture="swiftshader", description="", api=""),
        limits={},
        has_subgroups=False,
        wgsl_language_features={"readonly_and_readwrite_storage_textures"},
    )
    b = Adapter.of(sw)
    assert b.cpu and b.swiftshader and not b.device_scope_barrier and not b.packed_dot and b.workgroup_storage == 16384
    assert not a.subgroup_matrix and not b.subgroup_matrix
    # Dawn's subgroup matrices: the feature granted, an i8 16x16x32 config, subgroups of exactly 32
    i8 = ("i8", "i32", 16, 16, 32)
    dawn = dict(
        info=info,
        limits={},
        features=frozenset({"chromium-experimental-subgroup-matrix"}),
        subgroup_matrix_configs=frozenset({i8}),
        subgroup_sizes=(32, 32),
    )
    assert Adapter.of(NS(**dawn)).subgroup_matrix
    assert not Adapter.of(NS(**{**dawn, "subgroup_sizes": (32, 64)})).subgroup_matrix
    assert not Adapter.of(
        NS(**{**dawn, "subgroup_matrix_configs": frozenset({("u8", "u32", 16, 16, 32)})})
    ).subgroup_matrix
    assert not Adapter.of(NS(**{**dawn, "features": frozenset()})).subgroup_matrix
    # ... and the f16 kernel's: the f16 -> f32 16x16x16 config with shader-f16 granted
    f16 = ("f16", "f32", 16, 16, 16)
    assert not Adapter.of(NS(**dawn)).f16_subgroup_matrix
    with_f16 = {**dawn, "subgroup_matrix_configs": frozenset({i8, f16}), "has_f16": True}
    assert Adapter.of(NS(**with_f16)).f16_subgroup_matrix
    assert not Adapter.of(NS(**{**with_f16, "has_f16": False})).f16_subgroup_matrix
    assert not Adapter.of(
        NS(
            **{
                **with_f16,
                "subgroup_matrix_configs": frozenset({("f16", "f16", 16, 16, 16), ("f16", "f32", 16, 8, 16)}),
            }
        )
    ).f16_subgroup_matrix


def _dawn_nvidia(features=("subgroups", "timestamp-query"), wgsl=("packed_4x8_integer_dot_product",), subgroup_min=32):
    """A browser device as Dawn on the H200 makes it (docs: PLATFORM.md): no shader-f16, subgroups of 32
    (GPUAdapterInfo.subgroupMinSize), packed_4x8_integer_dot_product, 48 KiB workgroup memory."""
    from webllm_py.gpu.base import AdapterInfo, Device

    class Fake(Device):  # Device's own has_f16 / has_subgroups over the features a BrowserDevice was granted
        _create_pipeline = create_buffer = write_buffer = read_buffer = bind = recorder = destroy = None

    d = Fake()
    d.info = AdapterInfo(backend="browser", vendor="nvidia", architecture="hopper", description="")
    d.features = frozenset(features)
    d.limits = {
        "max_compute_workgroup_storage_size": 49152,
        "max_compute_invocations_per_workgroup": 1024,
        "max_storage_buffers_per_shader_stage": 10,
    }
    d.wgsl_language_features = frozenset(wgsl)
    d.subgroup_min_size = subgroup_min if "subgroups" in features else 0
    return d


def test_browser_gpu_without_f16_with_subgroups():
    """Dawn/NVIDIA: no shader-f16 (the KV cache holds f16 pairs packed in u32s), subgroups
    of 32 and packed dot products: the staged kernel with subgroup team reductions, matmul_i8, and the
    fused step writing partials for attention_combine (Tint's storageBarrier is workgroup-scoped: the
    step does not merge its slices itself)."""
    dev = _dawn_nvidia()
    assert not dev.has_f16
    a = Adapter.of(dev)
    assert (a.cpu, a.subgroups, a.subgroup_min, a.packed_dot, a.device_scope_barrier) == (False, True, 32, True, False)
    plan = plan_matvec(a, T.Q4_0, 2048, 2048)
    assert plan.template == "matvec_q4s" and team_subgroups(a, plan.tiling.lanes_for(2048))
    assert plan_matvec(a, T.Q6_K, 2048, 8192).tiling == StagedTiling(256, 16, 1) and team_subgroups(a, 16)
    assert plan_matmul(a, T.Q4_0, 2048, 2048).template == "matmul_i8"
    att = plan_attention(a, 32, 8, 64)
    assert att.fused and not att.step_merge
    merged = plan_attention(a, 32, 8, 64, KernelPolicy(fused_attention=True, step_merge=True))  # --attention fused
    assert merged.fused and merged.step_merge
    unfused = plan_attention(a, 32, 8, 64, KernelPolicy(fused_attention=False))  # --attention unfused
    assert not unfused.fused and (unfused.decode_wg, unfused.splits, unfused.full_chunks) == (32, 32, True)
    assert not a.f16 and kv_cache_dtype(a, 64) == "f16x2"


@pytest.mark.parametrize(
    "adapter,head_dim,policy,want",
    [
        (Adapter(f16=True), 64, "auto", "f16"),  # shader-f16: f16 values
        (Adapter(), 64, "auto", "f16x2"),  # a GPU without it: f16 pairs in u32s
        (Adapter(), 6, "auto", "f32"),  # packed needs head_dim % 4 == 0
        (Adapter(cpu=True), 64, "auto", "f32"),  # CPU adapters: f32 (measured on lavapipe)
        (Adapter(cpu=True, f16=True), 64, "auto", "f16"),
        (Adapter(cpu=True), 64, "f16x2", "f16x2"),  # bench --kv-cache / tests force it
        (Adapter(f16=True), 64, "f32", "f32"),
    ],
)
def test_kv_cache_dtype(adapter, head_dim, policy, want):
    assert kv_cache_dtype(adapter, head_dim, KernelPolicy(kv_cache=policy)) == want


def test_prefill_chunk():
    """GPUs take a 512-token prompt in one step; CPU adapters in steps of 64."""
    assert (prefill_chunk(GPU), prefill_chunk(SGMAT), prefill_chunk(CPU), prefill_chunk(SWIFTSHADER)) == (
        512,
        512,
        64,
        64,
    )


def test_browser_gpu_fallbacks():
    """Each feature absent: no subgroups (or an unknown size) -> workgroup-memory team reductions; no
    packed_4x8_integer_dot_product -> matvec_q4 and the f32 matmul."""
    a = Adapter.of(_dawn_nvidia(features=("timestamp-query",)))
    assert not a.subgroups and a.subgroup_min == 0 and not team_subgroups(a, 8)
    assert plan_matvec(a, T.Q4_0, 2048, 2048).template == "matvec_q4s"
    assert not team_subgroups(Adapter.of(_dawn_nvidia(subgroup_min=0)), 8)
    assert not team_subgroups(Adapter.of(_dawn_nvidia(subgroup_min=8)), 16)  # a team of 16 spans two subgroups
    b = Adapter.of(_dawn_nvidia(wgsl=()))
    assert not b.packed_dot and b.subgroups
    assert plan_matvec(b, T.Q4_0, 2048, 2048).template == "matvec_q4"
    assert plan_matmul(b, T.Q4_0, 2048, 2048).template == "matmul"


def test_prestage_auto():
    """KernelPolicy.prestage None: LlamaModel turns the quantized-x chain on for dense models of dim >= 4096
    only (measured faster there, slower at 2048 on Dawn); an explicit True / False is kept."""
    from webllm_py.planner import PRESTAGE_MIN_DIM, prestage_auto

    assert KernelPolicy().prestage is None
    assert prestage_auto(PRESTAGE_MIN_DIM, dense_mlp=True)
    assert not prestage_auto(PRESTAGE_MIN_DIM // 2, dense_mlp=True)
    assert not prestage_auto(PRESTAGE_MIN_DIM, dense_mlp=False)  # Mixtral's experts: no epilogue link
