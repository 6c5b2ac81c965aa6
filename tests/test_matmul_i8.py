"""The packed-dot prefill matmul (matmul_i8.wgsl.j2 after quantize_i8.wgsl.j2) on lavapipe against numpy over
gguf-py's dequantize times the f32 activations, both forms (workgroup tiles, barrier-free lanes), shapes that are
not multiples of the tiles, bias and accumulate; and the policy that chooses it (linear.prefill_i8_tiling).

Tolerance: the kernel's integer dot products are exact and its f32 scaling adds ~1e-7 relative error; what
moves the result is x rounded to int8 per 32-block, |x_k - d q_k| <= d / 2 with d = max|x_block| / 127, so
|y - ref| <= sum_k |w_k| d_block(k) / 2 per output (random signs make the actual error ~5x smaller). The test
asserts that bound, and that it is within 3% of sum |x||w| (so it is not a loose pass)."""

import dataclasses

import numpy as np
import pytest

from webllm_py.formats.quants import GGMLType, TensorInfo
from webllm_py.formats.source import BytesSource
from webllm_py.linear import Linear, MatmulI8Tiling, MatmulRowsTiling, prefill_i8_tiling
from webllm_py.planner import KernelPolicy
from webllm_py.weights import upload_tensor

from .linear_helpers import glu_error, glu_group, int8_bound, make_weight, run_linear, upload

pytestmark = pytest.mark.gpu

STAGED = MatmulI8Tiling(stage=True, tm=64, tn=32, rm=4, rn=2, kb=2)  # a GPU's for N < 4096 before pf
LANES = MatmulI8Tiling(stage=False, wg=8, rm=4, rn=8)  # lavapipe's
TILINGS = [
    STAGED,
    MatmulI8Tiling(),
    LANES,
    MatmulI8Tiling(tm=32, tn=32, planes=1),
    MatmulI8Tiling(stage=False, wg=8, rm=3, rn=4, planes=1),
    MatmulI8Tiling(pf=True),  # register prefetch, every thread's share whole
    MatmulI8Tiling(tm=32, tn=32, rm=4, rn=2, pf=True),  # shares that are not whole (guarded)
    MatmulI8Tiling(tm=128, tn=64, rm=8, rn=4, kb=1, pf=True),  # a GPU's for N < 4096
    MatmulI8Tiling(tm=128, tn=64, rm=8, rn=4, kb=2, pf=True, planes=1),  # a GPU's with one plane (width >= 1024)
]
IDS = [
    "staged",
    "staged64",
    "lanes",
    "staged32-1plane",
    "lanes-1plane",
    "pf64",
    "pf32",
    "pf128x64",
    "pf128x64-kb2-1plane",
]


# (N, K, T): K / 32 odd (one block a K step) and even; N and T neither multiples of the 32 x 32 tile nor of
# a CPU workgroup's 32 rows x 4 tokens; T = 2, the smallest prefill
SHAPES = [(37, 96, 5), (130, 256, 70), (33, 64, 2)]
SHAPES_K = [(37, 256, 5), (70, 512, 33)]  # Q4_K: super-blocks of 256


@pytest.mark.parametrize("tiling", TILINGS, ids=IDS)
@pytest.mark.parametrize("qtype", ["Q4_0", "Q4_1", "Q8_0", "Q4_K", "Q6_K"])
def test_matches_numpy(device, qtype, tiling):
    rng = np.random.default_rng(sum(map(ord, qtype)) + 10 * tiling.stage + tiling.planes)
    for N, K, T in SHAPES_K if qtype in ("Q4_K", "Q6_K") else SHAPES:
        raw, w = make_weight(qtype, N, K, rng)
        t = tiling if (K // 32) % tiling.kb == 0 else MatmulI8Tiling(**{**tiling.__dict__, "kb": 1})
        lin = Linear(device, upload(device, raw, qtype, N, K), matmul=t)
        x = rng.standard_normal((T, K)).astype(np.float32)
        x[0, :32] = 0.0  # an all-zero block: scale 0, no division by it
        x[1, 32:64] *= 100.0  # one large block beside ordinary ones
        y = run_linear(device, lin, x)  # y starts as NaN: every output must be written
        ref = x.astype(np.float64) @ w.T
        bound = int8_bound(x, w, tiling.planes)
        scale = np.abs(x.astype(np.float64)) @ np.abs(w).T
        assert (bound <= 0.03 / (254 if tiling.planes == 2 else 1) * scale).all()  # max|x_block| / 254 vs mean |x| ~0.8
        err = np.abs(y - ref)
        assert (err <= bound + 1e-5 * scale).all(), (N, K, T, float((err / (bound + 1e-30)).max()))


@pytest.mark.parametrize("tiling", [STAGED, LANES], ids=["staged", "lanes"])
def test_bias_and_accumulate(device, tiling):
    rng = np.random.default_rng(7)
    N, K, T = 45, 128, 9
    raw, w = make_weight("Q8_0", N, K, rng)
    bias = rng.standard_normal(N).astype(np.float32)
    bias_t = upload_tensor(device, BytesSource(bias.tobytes()), TensorInfo("b", (N,), 0, 0, N * 4))
    lin = Linear(device, upload(device, raw, "Q8_0", N, K), bias_t, matmul=tiling)
    x = rng.standard_normal((T, K)).astype(np.float32)
    y0 = rng.standard_normal((T, N)).astype(np.float32)
    ref = x.astype(np.float64) @ w.T + bias
    tol = int8_bound(x, w, tiling.planes) + 1e-5 * (np.abs(x) @ np.abs(w).T + np.abs(bias) + np.abs(y0))
    assert (np.abs(run_linear(device, lin, x) - ref) <= tol).all()
    assert (np.abs(run_linear(device, lin, x, y0, accumulate=True) - (ref + y0)) <= tol).all()


class _NoPackedDot:
    """A browser-like device whose WGSL lacks packed_4x8_integer_dot_product."""

    wgsl_language_features = frozenset({"readonly_and_readwrite_storage_textures"})

    def __init__(self, info):
        self.info = info


def test_policy(device):
    rng = np.random.default_rng(8)
    lanes = MatmulI8Tiling(stage=False, wg=8, rm=4, rn=8, planes=2)
    # the default on lavapipe: the barrier-free form for Q4_0, Q8_0 and Q4_K; the f32 kernels for Q4_1 (no
    # faster there) and the types it does not take
    for qtype in ("Q4_0", "Q8_0", "Q4_K"):
        assert prefill_i8_tiling(device, GGMLType[qtype], 256) == lanes
    assert prefill_i8_tiling(device, GGMLType.Q4_1, 64) is None
    raw, _ = make_weight("Q4_0", 8, 64, rng)
    assert isinstance(Linear(device, upload(device, raw, "Q4_0", 8, 64)).matmul_tiling, MatmulI8Tiling)
    raw, _ = make_weight("Q6_K", 8, 256, rng)
    assert isinstance(Linear(device, upload(device, raw, "Q6_K", 8, 256)).matmul_tiling, MatmulRowsTiling)
    assert prefill_i8_tiling(device, GGMLType.Q4_K, 96) is None  # rows of whole super-blocks only
    assert prefill_i8_tiling(_NoPackedDot(device.info), GGMLType.Q4_0, 64) is None
    # GPUs: workgroup tiles for all three (K / 32 odd: one block a K step)
    gpu = _NoPackedDot(dataclasses.replace(device.info, is_fallback=False))
    gpu.wgsl_language_features = frozenset({"packed_4x8_integer_dot_product"})
    assert prefill_i8_tiling(gpu, GGMLType.Q4_1, 4096, 14336) == MatmulI8Tiling(stage=True, kb=2, pf=True, planes=2)
    assert prefill_i8_tiling(gpu, GGMLType.Q4_0, 2048, 2048) == MatmulI8Tiling(tm=128, rm=8, kb=1, pf=True)
    assert prefill_i8_tiling(gpu, GGMLType.Q8_0, 96).kb == 1
    # the switch: "i8" / "i8x2" force the int8 kernel wherever it runs, "f32" keeps the dequantizing kernels
    i8, f32 = KernelPolicy(prefill="i8"), KernelPolicy(prefill="f32")
    assert prefill_i8_tiling(device, GGMLType.Q4_1, 64, policy=i8) == dataclasses.replace(lanes, planes=1)
    assert prefill_i8_tiling(gpu, GGMLType.Q4_0, 64, policy=i8).planes == 1
    assert prefill_i8_tiling(device, GGMLType.Q4_0, 64, policy=f32) is None
    assert prefill_i8_tiling(gpu, GGMLType.Q4_0, 64, policy=f32) is None
    raw, _ = make_weight("Q4_0", 8, 64, rng)
    assert isinstance(Linear(device, upload(device, raw, "Q4_0", 8, 64), policy=f32).matmul_tiling, MatmulRowsTiling)


@pytest.mark.slow
def test_smollm2_two_planes_match_transformers(device):
    """The real model with the int8 prefill forced on every Q4_1 layer (lavapipe's default keeps Q4_1 in f32,
    a GPU's takes it): last-token logits after an 80-token prompt (5 prefill chunks) within 2e-3 of max|logit|
    of transformers' (f32 kernels: 2e-4; one plane: 2.9e-2, which fails this), 32 greedy tokens equal."""
    import asyncio

    from webllm_py.default_model import default_model_path
    from webllm_py.engine import Engine
    from webllm_py.sampling import SamplingParams

    from .reference import hf_greedy

    path = default_model_path()
    engine = asyncio.run(
        Engine.load(path, device=device, context_window=256, prefill_chunk=16, policy=KernelPolicy(prefill="i8x2"))
    )
    assert sum(isinstance(m, MatmulI8Tiling) for m in _linear_tilings(engine)) >= 7 * 30  # q k v o gate up down
    text = (
        "In 1440, Johannes Gutenberg, a goldsmith from Mainz, developed a movable-type printing press that "
        "changed how books were made across Europe. Before that, texts were copied by hand in monasteries, "
        "a slow and costly process. Within decades, presses had spread to more than two hundred cities, and "
        "millions of books were printed. The history of the printing press begins"
    )
    ids = engine.tokenizer.encode(text)
    ref_tokens, ref_logits = hf_greedy(path, ids, 32)
    logits = np.frombuffer(asyncio.run(engine.logits(ids)), np.float32)[: engine.config.vocab_size]
    err = np.abs(logits - ref_logits).max()
    print(f"\nSmolLM2 int8 x2 prefill, n={len(ids)}: max |logit diff| {err:.4f} of {np.abs(ref_logits).max():.2f}")
    assert err <= 2e-3 * np.abs(ref_logits).max()
    _, ours = asyncio.run(engine.complete(ids, params=SamplingParams(temperature=0.0), max_tokens=32, ignore_eos=True))
    assert ours == ref_tokens


def _linear_tilings(engine):
    """The prefill tilings of every Linear the engine's model holds."""
    seen, out, stack = set(), [], [engine.model]
    while stack:
        o = stack.pop()
        if id(o) in seen or not hasattr(o, "__dict__"):
            continue
        seen.add(id(o))
        if isinstance(o, Linear):
            out.append(o.matmul_tiling)
            continue
        for v in vars(o).values():
            stack.extend(v if isinstance(v, (list, tuple)) else [v])
    return out


# matmul_i8's fused gate/up (glu): (qtype, H, K, T, tile, act); ragged H and T, the pf loop with whole and partial
# shares and the plain loop, a K type, gelu_tanh
GLU_CASES = [
    ("Q4_0", 37, 96, 5, MatmulI8Tiling(tm=32, tn=32, rm=4, rn=2, kb=1, pf=True), "silu"),
    ("Q4_K", 45, 512, 20, MatmulI8Tiling(tm=64, tn=64, rm=4, rn=4, kb=2, pf=True), "gelu_tanh"),
    ("Q8_0", 70, 128, 37, MatmulI8Tiling(tm=32, tn=32, rm=4, rn=2, kb=2), "silu"),
]


@pytest.mark.parametrize("case", GLU_CASES, ids=[f"{c[0]}-{c[5]}" for c in GLU_CASES])
def test_glu_matches_numpy(case):
    """A gate/up MatvecGroup whose prompt runs matmul_i8 on a GPU (lavapipe told it is one): x's quantize_i8 pass
    and ONE matmul_i8 with the GLU in its epilogue, within glu_error's bound (each matmul within int8_bound) of
    numpy over gguf-py's dequantization; with KernelPolicy(prefill_glu=False) quantize_i8, two matmuls and the
    GLU pass, within the same bound."""
    from .model_checks import gpu_like_device

    device = gpu_like_device()
    qtype, H, K, T, tile, act = case
    rng = np.random.default_rng(H + K + T + 3)
    (raw_g, wg), (raw_u, wu) = make_weight(qtype, H, K, rng), make_weight(qtype, H, K, rng)
    x = rng.standard_normal((T, K)).astype(np.float32)
    bound, ref = glu_error(x, wg, wu, act, int8_bound(x, wg), int8_bound(x, wu))
    for on, kernels in (
        (True, ["quantize_i8", "matmul_i8"]),
        (False, ["quantize_i8", "matmul_i8", "matmul_i8", "glu"]),
    ):
        policy = KernelPolicy(prefill="i8", i8_tiling=tile, prefill_glu=on)
        y, labels, fused = glu_group(device, raw_g, raw_u, H, K, x, policy, act, qtype)
        assert fused == on and labels == kernels, (on, labels)
        assert np.isfinite(y).all()
        assert (np.abs(y - ref) <= bound).all(), (on, float((np.abs(y - ref) / bound).max()))


@pytest.mark.parametrize("qtype", ["Q4_0", "Q6_K"])
def test_qkv_group_matches_numpy(qtype):
    """A Q/K/V MatvecGroup whose prompt runs matmul_i8 on a GPU (lavapipe told it is one): x's quantize_i8 pass and
    ONE matmul_i8 over the three matrices (the template's mats: each workgroup on one matrix's rows), ragged rows;
    with KernelPolicy(prefill_qkv=False) a matmul each; every y within int8_bound of numpy over gguf-py's
    dequantization and every output written."""
    import struct

    from webllm_py.linear import MatvecGroup

    from .linear_helpers import Labels, f32_buffer, read_f32
    from .model_checks import gpu_like_device

    device = gpu_like_device()
    rows, K, T = (70, 21, 37), 256, 20
    rng = np.random.default_rng(5)
    weights = [make_weight(qtype, n, K, rng) for n in rows]
    x = rng.standard_normal((T, K)).astype(np.float32)
    tile = MatmulI8Tiling(tm=32, tn=32, rm=4, rn=2, kb=2, pf=True)
    for on, kernels in ((True, ["quantize_i8", "matmul_i8"]), (False, ["quantize_i8"] + ["matmul_i8"] * 3)):
        xb = f32_buffer(device, x)
        ys = [f32_buffer(device, np.full((T, n), np.nan, np.float32)) for n in rows]
        params = device.buffer_from(struct.pack("<II", 0, T))
        policy = KernelPolicy(prefill="i8", i8_tiling=tile, prefill_qkv=on)
        bound = [
            Linear(device, upload(device, raw, qtype, n, K), policy=policy).bind(xb, y, params)
            for (raw, _), n, y in zip(weights, rows, ys)
        ]
        group = MatvecGroup(bound)
        with device.recorder() as rec:
            labels = Labels(rec)
            group.record(labels, T)
        assert (group.prefill_group is not None) == on and labels.kernels == kernels, (on, labels.kernels)
        for (_, w), n, y in zip(weights, rows, ys):
            out = read_f32(device, y, T * n).reshape(T, n)
            assert np.isfinite(out).all()
            assert (np.abs(out - x.astype(np.float64) @ w.T) <= int8_bound(x, w) + 1e-5 * np.abs(x) @ np.abs(w).T).all()
