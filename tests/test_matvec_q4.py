"""The aligned block decode matvec (shaders/matvec_q4.wgsl.j2) on lavapipe vs numpy over gguf-py's
dequantize (independent reference): Q4_0, Q4_1, Q4_K, Q5_0 and Q8_0, tree and subgroup
reductions, rows that do not fill the last workgroup, residual accumulate, and the fused forms
(Q/K/V in one dispatch, of one type or several; gate/up with SiLU or tanh-GELU applied on the way out); and the staged
kernel (shaders/matvec_q4s.wgsl.j2: x as int8 blocks in workgroup memory; Q4_0, Q4_1, Q4_K and
Q8_0, Q6_K) against numpy over the same int8 rounding of x, with the RMSNorm folded in or not."""

import struct

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")

from webllm_py.linear import Linear, MatvecGroup, MatvecTiling  # noqa: E402
from webllm_py.planner import KernelPolicy  # noqa: E402
from webllm_py.ops import GLU  # noqa: E402

from .linear_helpers import (
    f32_buffer,
    make_weight,
    q8_blocks,
    read_f32,
    scaled_error,
    staged_error,
    staged_weight,
    upload,
)  # noqa: E402


TOL = 1e-5


def matvec_once(dev, lin, x, y0, accumulate: bool) -> np.ndarray:
    """y = x W^T for one token through `lin` (y0 + x W^T with accumulate), less y0: [1, N] float64."""
    xb, yb = f32_buffer(dev, x), f32_buffer(dev, y0)
    bound = lin.bind(xb, yb, accumulate=accumulate)
    with dev.recorder() as rec:
        bound.record(rec, 1)
    return read_f32(dev, yb, lin.N)[None] - (y0 if accumulate else 0)


@pytest.fixture(scope="module")
def sg_device():
    from webllm_py.gpu.native import NativeDevice

    dev = NativeDevice(use_subgroups=True)
    if not dev.has_subgroups:
        pytest.skip("adapter has no subgroups")  # lavapipe has them
    return dev


@pytest.mark.parametrize("qtype", ["Q4_0", "Q4_1", "Q4_K", "Q5_0", "Q8_0"])
@pytest.mark.parametrize("subgroups,wg,rows", [(False, 64, 4), (False, 32, 3), (True, 16, 2), (True, 128, 1)])
def test_single_matrix(device, sg_device, qtype, subgroups, wg, rows):
    dev = sg_device if subgroups else device
    rng = np.random.default_rng(7)
    N, K = 37, 768  # N not a multiple of rows; K = 12 units (3 Q4_K super-blocks)
    raw, w = make_weight(qtype, N, K, rng)
    lin = Linear(dev, upload(dev, raw, qtype, N, K), matvec=MatvecTiling(wg, rows, True), subgroups=subgroups)
    assert lin.q4
    x = rng.standard_normal((1, K)).astype(np.float32)
    y0 = rng.standard_normal((1, N)).astype(np.float32)
    for accumulate in (False, True):
        y = matvec_once(dev, lin, x, y0, accumulate)
        # f32 throughout; weights enter as 1 + n/16, so sums lose a few bits to the sum(x) offset
        assert scaled_error(y, x, w) < TOL, (accumulate, scaled_error(y, x, w))


@pytest.mark.parametrize(
    "qtype,K", [("Q4_0", 64), ("Q4_1", 128), ("Q4_0", 192), ("Q4_K", 256), ("Q5_0", 64), ("Q8_0", 192)]
)
def test_short_rows(device, qtype, K):
    """Rows of one to four units: fewer units than rows per workgroup (threads are still one per row)."""
    rng = np.random.default_rng(9)
    N = 11
    raw, w = make_weight(qtype, N, K, rng)
    lin = Linear(device, upload(device, raw, qtype, N, K), matvec=MatvecTiling(64, 4, True))
    assert lin.q4
    x = rng.standard_normal((1, K)).astype(np.float32)
    xb, yb = f32_buffer(device, x), f32_buffer(device, np.zeros((1, N), np.float32))
    bound = lin.bind(xb, yb)
    with device.recorder() as rec:
        bound.record(rec, 1)
    y = read_f32(device, yb, N)[None]
    assert scaled_error(y, x, w) < TOL, scaled_error(y, x, w)


@pytest.mark.parametrize(
    "types",
    [("Q4_0",) * 3, ("Q4_1",) * 3, ("Q4_K",) * 3, ("Q5_0",) * 3, ("Q8_0",) * 3, ("Q5_0", "Q5_0", "Q8_0")]
    + [("Q8_0", "Q4_K", "Q5_0"), ("Q4_1", "Q5_0", "Q4_0")],
    ids=lambda t: "-".join(t),
)
def test_fused_qkv(device, types):
    """Q/K/V in one dispatch, of one type or of several (Gemma-3's Q4_K_M file: Q8_0 attn_v beside Q5_0 q, k
    in half the layers): each matrix's workgroups on their type's branch."""
    rng = np.random.default_rng(8)
    K, parts = 512, (40, 12, 9)
    x = rng.standard_normal((1, K)).astype(np.float32)
    xb = f32_buffer(device, x)
    bounds, ws, ys = [], [], []
    for n, qtype in zip(parts, types):
        raw, w = make_weight(qtype, n, K, rng)
        yb = f32_buffer(device, np.full(n, np.nan, np.float32))
        lin = Linear(device, upload(device, raw, qtype, n, K), matvec=MatvecTiling(32, 4, True), subgroups=False)
        bounds.append(lin.bind(xb, yb))
        ws.append(w)
        ys.append(yb)
    group = MatvecGroup(bounds)
    assert group.fused is not None and len(group.runs) == 1
    with device.recorder() as rec:
        group.record(rec, 1)
    for n, w, yb in zip(parts, ws, ys):
        assert scaled_error(read_f32(device, yb, n)[None], x, w) < TOL


@pytest.mark.parametrize(
    "qtype,act", [("Q4_0", "silu"), ("Q4_K", "gelu_tanh"), ("Q5_0", "gelu_tanh"), ("Q8_0", "silu")]
)
def test_fused_gate_up(device, qtype, act):
    rng = np.random.default_rng(9)
    H, K = 70, 256
    x = rng.standard_normal((1, K)).astype(np.float32)
    xb = f32_buffer(device, x)
    (rg, wg_), (ru, wu) = make_weight(qtype, H, K, rng), make_weight(qtype, H, K, rng)
    bufs = [f32_buffer(device, np.zeros(H, np.float32)) for _ in range(3)]
    tiling = MatvecTiling(64, 4, True)
    gate = Linear(device, upload(device, rg, qtype, H, K), matvec=tiling).bind(xb, bufs[0])
    up = Linear(device, upload(device, ru, qtype, H, K), matvec=tiling).bind(xb, bufs[1])
    step = device.buffer_from(struct.pack("<II", 0, 1))
    glu = GLU(device, H, act).bind(bufs[0], bufs[1], bufs[2], step)
    group = MatvecGroup([gate, up], glu=(act, glu))
    assert group.fused is not None
    with device.recorder() as rec:
        group.record(rec, 1)
    out = read_f32(device, bufs[2], H)
    g, u = x[0].astype(np.float64) @ wg_.T, x[0].astype(np.float64) @ wu.T
    if act == "silu":
        ref = g / (1 + np.exp(-g)) * u
    else:
        ref = 0.5 * g * (1 + np.tanh(np.sqrt(2 / np.pi) * (g + 0.044715 * g**3))) * u
    scale = (np.abs(x[0]) @ np.abs(wg_).T) * (np.abs(x[0]) @ np.abs(wu).T) + 1e-30
    assert (np.abs(out - ref) / scale).max() < TOL


@pytest.mark.parametrize("qtype,glu", [("Q4_0", None), ("Q4_K", "silu"), ("Q5_0", "silu"), ("Q8_0", None)])
def test_rmsnorm_folded_in(device, qtype, glu):
    """MatvecGroup(norm=...) reads the residual and normalises on the way: equals
    W @ (x / rms(x) * (w + offset)) from numpy; the norm's own dispatch is skipped for one token."""
    from webllm_py.ops import RMSNorm

    rng = np.random.default_rng(10)
    K, eps, offset = 512, 1e-5, 1.0
    parts = (24, 24) if glu else (24, 8, 8)
    x = (rng.standard_normal((1, K)) * 3).astype(np.float32)
    nw = rng.standard_normal(K).astype(np.float32)
    h = x.astype(np.float64) / np.sqrt((x.astype(np.float64) ** 2).mean() + eps) * (nw + offset)
    xb, hb = f32_buffer(device, x), f32_buffer(device, np.full((1, K), np.nan, np.float32))
    step = device.buffer_from(struct.pack("<II", 0, 1))
    norm = RMSNorm(device, f32_buffer(device, nw), K, eps, weight_offset=offset, wg=64).bind(xb, hb, step)
    bounds, ws, ys = [], [], []
    for n in parts:
        raw, w = make_weight(qtype, n, K, rng)
        yb = f32_buffer(device, np.full(n, np.nan, np.float32))
        bounds.append(
            Linear(
                device,
                upload(device, raw, qtype, n, K),
                matvec=MatvecTiling(64, 4, True),
                policy=KernelPolicy(fold_norm_max_k=K),
            ).bind(hb, yb)
        )
        ws.append(w)
        ys.append(yb)
    out = f32_buffer(device, np.zeros(parts[0], np.float32))
    glu_op = ("silu", GLU(device, parts[0], "silu").bind(ys[0], ys[1], out, step)) if glu else None
    group = MatvecGroup(bounds, glu=glu_op, norm=norm)
    assert group.fused is not None and norm.absorbed
    with device.recorder() as rec:
        norm.record(rec, 1)  # skipped: folded into the group's dispatch
        group.record(rec, 1)
    assert np.isnan(read_f32(device, hb, K)).all()
    if glu:
        g, u = h[0] @ ws[0].T, h[0] @ ws[1].T
        ref = g * 0.5 * (1 + np.tanh(g / 2)) * u  # silu, with the sigmoid written without overflow
        scale = (np.abs(h[0]) @ np.abs(ws[0]).T) * (np.abs(h[0]) @ np.abs(ws[1]).T)
        assert (np.abs(read_f32(device, out, parts[0]) - ref) / scale).max() < TOL
    else:
        for n, w, yb in zip(parts, ws, ys):
            assert scaled_error(read_f32(device, yb, n)[None], h, w) < TOL


def test_gemma3_qkv_mixed_types_norm_folded(device):
    """Gemma-3-270M's Q/K/V in the layers where its Q4_K_M file keeps attn_v in Q8_0: Q5_0 q (1024 rows), k (256)
    and Q8_0 v (256) of 640-wide rows (not whole 256-weight units: matvec_q4, not the staged kernel), with the
    RMSNorm folded in: one dispatch, the norm's own skipped; against numpy over gguf-py's dequantize."""
    rng = np.random.default_rng(21)
    K = 640
    rms, hb, step, h = _folded_norm(device, rng, K, 1e-6, scale=3.0)
    bounds, ws, ys = [], [], []
    for n, qtype in zip((1024, 256, 256), ("Q5_0", "Q5_0", "Q8_0")):
        raw, w = make_weight(qtype, n, K, rng)
        yb = f32_buffer(device, np.full(n, np.nan, np.float32))
        lin = Linear(device, upload(device, raw, qtype, n, K), matvec=MatvecTiling(64, 4, True))
        assert lin.plan.template == "matvec_q4"
        bounds.append(lin.bind(hb, yb))
        ws.append(w)
        ys.append(yb)
    group = MatvecGroup(bounds, norm=rms)
    assert len(group.runs) == 1 and rms.absorbed
    with device.recorder() as rec:
        rms.record(rec, 1)  # skipped: folded in
        group.record(rec, 1)
    assert np.isnan(read_f32(device, hb, K)).all()
    for b, w, yb in zip(bounds, ws, ys):
        assert scaled_error(read_f32(device, yb, b.linear.N)[None], h, w) < TOL


# --- the staged kernel (matvec_q4s.wgsl.j2): x quantized to int8 blocks in workgroup memory ---


@pytest.mark.parametrize("qtype", ["Q4_0", "Q4_1", "Q4_K", "Q8_0", "Q6_K"])
@pytest.mark.parametrize("wg,lanes,rows,prefetch", [(64, 2, 1, False), (32, 4, 2, True)])
def test_staged_single_matrix(device, qtype, wg, lanes, rows, prefetch):
    """N = 37 is not a multiple of the workgroup's rows (32), K = 768 (3 units) or 1536 (6) not a
    multiple of the lanes (2, 4: some lanes take one unit more); accumulate or not."""
    from webllm_py.linear import StagedTiling

    rng = np.random.default_rng(11)
    N, K = 37, 768 if not prefetch else 1536  # 3 units, or 6 (two or more per lane: the prefetch runs)
    raw, w = staged_weight(qtype, N, K, rng)
    lin = Linear(device, upload(device, raw, qtype, N, K), matvec=StagedTiling(wg, lanes, rows, prefetch))
    assert lin.staged and lin.q4
    x = rng.standard_normal((1, K)).astype(np.float32)
    x[0, :32] = 0  # an all-zero block: scale 0
    y0 = rng.standard_normal((1, N)).astype(np.float32)
    for accumulate in (False, True):
        y = matvec_once(device, lin, x, y0, accumulate)
        assert staged_error(y, x, w) < TOL, (accumulate, staged_error(y, x, w))
        assert scaled_error(y, x, w) < 1e-2  # and the int8 activations stay near the f32 product


def test_staged_falls_back(device, monkeypatch):
    """K % 256 != 0: a StagedTiling request gets the matvec_q4 kernel (still correct); so does any K
    on a device whose WGSL lacks packed_4x8_integer_dot_product."""
    from webllm_py.linear import StagedTiling

    monkeypatch.setattr(device, "wgsl_language_features", set(), raising=False)
    raw, _ = make_weight("Q4_0", 4, 256, np.random.default_rng(0))
    assert not Linear(device, upload(device, raw, "Q4_0", 4, 256), matvec=StagedTiling()).staged
    monkeypatch.undo()
    rng = np.random.default_rng(12)
    N, K = 9, 576
    raw, w = make_weight("Q4_0", N, K, rng)
    lin = Linear(device, upload(device, raw, "Q4_0", N, K), matvec=StagedTiling(64, 4, 1, True))
    assert not lin.staged and lin.q4
    x = rng.standard_normal((1, K)).astype(np.float32)
    xb, yb = f32_buffer(device, x), f32_buffer(device, np.zeros((1, N), np.float32))
    bound = lin.bind(xb, yb)
    with device.recorder() as rec:
        bound.record(rec, 1)
    assert scaled_error(read_f32(device, yb, N)[None], x, w) < TOL


@pytest.mark.parametrize(
    "qtype,glu,norm",
    [
        ("Q4_0", None, True),
        ("Q4_K", None, False),
        ("Q4_1", "silu", True),
        ("Q4_K", "gelu_tanh", True),
        ("Q8_0", None, True),
        ("Q8_0", "silu", False),
        ("Q6_K", None, False),
        ("Q6_K", "gelu_tanh", True),
    ],
)
def test_staged_fused(device, qtype, glu, norm):
    """Q/K/V in one dispatch, or gate/up with the GLU, with or without the RMSNorm folded in (the
    staged kernel folds it at any K: the norm's own dispatch is skipped)."""
    from webllm_py.linear import StagedTiling
    from webllm_py.ops import RMSNorm

    rng = np.random.default_rng(13)
    K, eps, offset = 512, 1e-5, 1.0 if glu == "gelu_tanh" else 0.0
    parts = (40, 40) if glu else (40, 12, 9)
    x = (rng.standard_normal((1, K)) * 3).astype(np.float32)
    nw = rng.standard_normal(K).astype(np.float32)
    xb, hb = f32_buffer(device, x), f32_buffer(device, np.full((1, K), np.nan, np.float32))
    step = device.buffer_from(struct.pack("<II", 0, 1))
    rms = RMSNorm(device, f32_buffer(device, nw), K, eps, weight_offset=offset, wg=64).bind(xb, hb, step)
    h = x.astype(np.float64) / np.sqrt((x.astype(np.float64) ** 2).mean() + eps) * (nw + offset) if norm else x
    tiling = StagedTiling(32, 2, 2, True)  # 32 rows per workgroup: the 40-row parts straddle two
    bounds, ws, ys = [], [], []
    for n in parts:
        raw, w = staged_weight(qtype, n, K, rng)
        yb = f32_buffer(device, np.full(n, np.nan, np.float32))
        bounds.append(Linear(device, upload(device, raw, qtype, n, K), matvec=tiling).bind(hb if norm else xb, yb))
        ws.append(w)
        ys.append(yb)
    out = f32_buffer(device, np.full(parts[0], np.nan, np.float32))
    glu_op = (glu, GLU(device, parts[0], glu).bind(ys[0], ys[1], out, step)) if glu else None
    group = MatvecGroup(bounds, glu=glu_op, norm=rms if norm else None)
    assert group.fused is not None and rms.absorbed == norm
    with device.recorder() as rec:
        if norm:
            rms.record(rec, 1)  # skipped: folded into the group's dispatch
        group.record(rec, 1)
    if norm:
        assert np.isnan(read_f32(device, hb, K)).all()
    hq = q8_blocks(h.astype(np.float32))
    # with the norm, the GPU's 1/rms may differ from numpy's in the last bit and move an element
    # across a rounding boundary: one int8 step of error at most in a few elements
    tol = 3e-4 if norm else TOL
    if glu:
        g, u = hq[0] @ ws[0].T, hq[0] @ ws[1].T
        sig = 0.5 * (1 + np.tanh(g / 2))
        a = g * sig if glu == "silu" else 0.5 * g * (1 + np.tanh(np.sqrt(2 / np.pi) * (g + 0.044715 * g**3)))
        scale = (np.abs(hq[0]) @ np.abs(ws[0]).T) * (np.abs(hq[0]) @ np.abs(ws[1]).T)
        assert (np.abs(read_f32(device, out, parts[0]) - a * u) / scale).max() < tol
    else:
        for n, w, yb in zip(parts, ws, ys):
            assert staged_error(read_f32(device, yb, n)[None], h.astype(np.float32), w) < tol


def _folded_norm(device, rng, K: int, eps: float, scale: float = 1.0):
    """A token's raw x [1, K] (rng draws x, then the norm weights) and an RMSNorm bound to it, for a fused
    matvec group to fold in: (the bound norm, its output buffer hb (NaN: the folded norm never writes it), the
    step params, h = RMSNorm(x) in f64 from numpy)."""
    from webllm_py.ops import RMSNorm

    x = (rng.standard_normal((1, K)) * scale).astype(np.float32)
    nw = rng.standard_normal(K).astype(np.float32)
    xb, hb = f32_buffer(device, x), f32_buffer(device, np.full((1, K), np.nan, np.float32))
    step = device.buffer_from(struct.pack("<II", 0, 1))
    rms = RMSNorm(device, f32_buffer(device, nw), K, eps, wg=64).bind(xb, hb, step)
    h = x.astype(np.float64) / np.sqrt((x.astype(np.float64) ** 2).mean() + eps) * nw
    return rms, hb, step, h


def _qkv_members(device, rng, K: int, hb, types, tilings):
    """Bound Q/K/V linears of rows (40, 12, 9) reading hb, each of its type and staged tiling: the bound linears,
    their weights as numpy saw them, and the output buffers (NaN until written)."""
    bounds, ws, ys = [], [], []
    for n, qtype, t in zip((40, 12, 9), types, tilings):
        raw, w = staged_weight(qtype, n, K, rng)
        yb = f32_buffer(device, np.full(n, np.nan, np.float32))
        bounds.append(Linear(device, upload(device, raw, qtype, n, K), matvec=t).bind(hb, yb))
        ws.append(w)
        ys.append(yb)
    return bounds, ws, ys


@pytest.mark.parametrize(
    "types,form",
    [
        (("Q4_K", "Q4_K", "Q6_K"), "plain"),
        (("Q4_0", "Q8_0", "Q8_0"), "plain"),
        (("Q6_K", "Q4_K", "Q4_0"), "plain"),
        (("Q4_K", "Q4_K", "Q6_K"), "prefetch"),
        (("Q8_0", "Q4_1", "Q6_K"), "prestaged"),
    ],
    ids=["q4k-q4k-q6k", "q40-q80-q80", "q6k-q4k-q40", "q4k-q6k-prefetch", "q80-q41-q6k-prestaged"],
)
def test_staged_mixed_types_fuse(device, types, form):
    """Q/K/V of several types (a Q4_K_M file's Q6_K attn_v beside Q4_K q and k): one dispatch, each
    matrix's workgroups on their type's branch (with prefetch: each type's own registers for the next unit;
    prestaged: x quantized once before, by a QuantizeX), folding the RMSNorm (whose own dispatch is skipped);
    against numpy."""
    from webllm_py.linear import StagedTiling

    rng = np.random.default_rng(17)
    # K 1024 with 2 lanes: each lane walks 2 units, so prefetch loads a next unit
    K, eps = 512 if form == "plain" else 1024, 1e-5
    tiling = StagedTiling(32, 2, 2, prefetch=form == "prefetch", prestaged=form == "prestaged")
    rms, hb, step, h = _folded_norm(device, rng, K, eps, scale=3.0)
    bounds, ws, ys = _qkv_members(device, rng, K, hb, types, [tiling] * 3)
    group = MatvecGroup(bounds, norm=rms)
    assert len(group.runs) == 1 and rms.absorbed
    assert (group.runs[0][2] is not None) == (form == "prestaged")  # the QuantizeX before the dispatch
    with device.recorder() as rec:
        rms.record(rec, 1)  # skipped: folded into both runs
        group.record(rec, 1)
    assert np.isnan(read_f32(device, hb, K)).all()
    for b, w, yb in zip(bounds, ws, ys):
        assert staged_error(read_f32(device, yb, b.linear.N)[None], h.astype(np.float32), w) < 3e-4


def test_staged_mixed_tilings_fuse_in_runs(device):
    """Q/K/V whose tilings differ (as the planner gives a long-row Q6_K its own): one dispatch per run of a
    tiling, each folding the RMSNorm; against numpy."""
    from webllm_py.linear import StagedTiling

    rng = np.random.default_rng(19)
    K, eps = 512, 1e-5
    tilings = (StagedTiling(32, 2, 2), StagedTiling(32, 2, 2), StagedTiling(64, 2, 1))
    rms, hb, step, h = _folded_norm(device, rng, K, eps, scale=3.0)
    bounds, ws, ys = _qkv_members(device, rng, K, hb, ("Q4_K", "Q4_K", "Q6_K"), tilings)
    group = MatvecGroup(bounds, norm=rms)
    assert len(group.runs) == 2 and rms.absorbed
    with device.recorder() as rec:
        rms.record(rec, 1)
        group.record(rec, 1)
    for b, w, yb in zip(bounds, ws, ys):
        assert staged_error(read_f32(device, yb, b.linear.N)[None], h.astype(np.float32), w) < 3e-4


def test_staged_gate_up_default_tiling(device):
    """A fused gate/up group of K >= 4096 at the default staged tiling takes the glu tiling of
    linear.staged_tiling (128 threads: 16 rows a workgroup), norm folded; against numpy."""
    from webllm_py.linear import staged_tiling

    rng = np.random.default_rng(14)
    K, H, eps = 4096, 40, 1e-5
    rms, hb, step, h = _folded_norm(device, rng, K, eps)
    ws, bounds, ys = [], [], []
    for _ in range(2):
        raw, w = make_weight("Q4_0", H, K, rng)
        yb = f32_buffer(device, np.zeros(H, np.float32))
        bounds.append(Linear(device, upload(device, raw, "Q4_0", H, K), matvec=staged_tiling(K)).bind(hb, yb))
        ws.append(w)
        ys.append(yb)
    out = f32_buffer(device, np.full(H, np.nan, np.float32))
    group = MatvecGroup(bounds, glu=("silu", GLU(device, H, "silu").bind(ys[0], ys[1], out, step)), norm=rms)
    tg = staged_tiling(K, glu=True)
    assert tg != staged_tiling(K) and group.groups == -(-H // tg.rows_per_group(K)) and rms.absorbed
    with device.recorder() as rec:
        rms.record(rec, 1)
        group.record(rec, 1)
    hq = q8_blocks(h.astype(np.float32))
    g, u = hq[0] @ ws[0].T, hq[0] @ ws[1].T
    scale = (np.abs(hq[0]) @ np.abs(ws[0]).T) * (np.abs(hq[0]) @ np.abs(ws[1]).T)
    assert (np.abs(read_f32(device, out, H) - g * 0.5 * (1 + np.tanh(g / 2)) * u) / scale).max() < 3e-4


def test_staged_qkv_default_tiling(device):
    """A fused Q/K/V group of K >= 2048 at the default staged tiling takes the Q/K/V row of STAGED_TABLE (128
    threads: 16 rows a workgroup, its three parts' workgroups straddling), norm folded, mixed types in one
    dispatch; against numpy."""
    from webllm_py.linear import staged_tiling

    rng = np.random.default_rng(15)
    K, eps = 2048, 1e-5
    t1 = staged_tiling(K)
    rms, hb, step, h = _folded_norm(device, rng, K, eps, scale=3.0)
    bounds, ws, ys = _qkv_members(device, rng, K, hb, ("Q4_0", "Q4_0", "Q6_K"), (t1, t1, t1))
    group = MatvecGroup(bounds, norm=rms)
    tg = staged_tiling(K, group=True)
    assert tg != t1 and tg.rows_per_group(K) == 16 and rms.absorbed and len(group.runs) == 1
    assert group.groups == sum(-(-b.linear.N // 16) for b in bounds)
    with device.recorder() as rec:
        rms.record(rec, 1)
        group.record(rec, 1)
    for b, w, yb in zip(bounds, ws, ys):
        assert staged_error(read_f32(device, yb, b.linear.N)[None], h.astype(np.float32), w) < 3e-4


def test_staged_default_prefetch_long_rows(device):
    """Rows where a lane walks 4+ units (1B down: K = 8192 at 8 lanes) take the prefetching tiling
    by default, shorter ones not; the default kernel at K = 8192 vs numpy (accumulating, as down does)."""
    from webllm_py.linear import staged_tiling

    assert staged_tiling(8192).prefetch and not staged_tiling(2048).prefetch and not staged_tiling(4096).prefetch
    rng = np.random.default_rng(16)
    N, K = 40, 8192
    raw, w = make_weight("Q4_0", N, K, rng)
    lin = Linear(device, upload(device, raw, "Q4_0", N, K), matvec=staged_tiling(K, N=N))
    assert lin.staged and lin.matvec_tiling.prefetch
    x = rng.standard_normal((1, K)).astype(np.float32)
    y0 = rng.standard_normal((1, N)).astype(np.float32)
    xb, yb = f32_buffer(device, x), f32_buffer(device, y0)
    with device.recorder() as rec:
        lin.bind(xb, yb, accumulate=True).record(rec, 1)
    assert staged_error(read_f32(device, yb, N)[None] - y0, x, w) < TOL


@pytest.mark.parametrize(
    "lanes,glu,norm,accumulate,qtype",
    [
        (8, None, False, True, "Q4_0"),
        (4, None, True, False, "Q4_0"),
        (2, "silu", True, False, "Q4_0"),
        (8, "gelu_tanh", False, False, "Q4_0"),
        (8, None, True, False, "Q8_0"),
        (4, "silu", False, False, "Q6_K"),
    ],
)
def test_staged_subgroup_reduction(sg_device, lanes, glu, norm, accumulate, qtype):
    """matvec_q4s with its teams reduced by subgroupShuffleXor (lavapipe's subgroups hold 8
    invocations): one matrix, Q/K/V or gate/up, norm folded or not, vs numpy over q8(x)."""
    from webllm_py.linear import StagedTiling
    from webllm_py.ops import RMSNorm

    dev = sg_device
    rng = np.random.default_rng(17)
    K, eps = 2048, 1e-5
    parts = (40, 40) if glu else ((37,) if accumulate else (40, 12, 9))
    x = (rng.standard_normal((1, K)) * 3).astype(np.float32)
    nw = rng.standard_normal(K).astype(np.float32)
    xb, hb = f32_buffer(dev, x), f32_buffer(dev, np.full((1, K), np.nan, np.float32))
    step = dev.buffer_from(struct.pack("<II", 0, 1))
    rms = RMSNorm(dev, f32_buffer(dev, nw), K, eps, wg=64).bind(xb, hb, step)
    h = x.astype(np.float64) / np.sqrt((x.astype(np.float64) ** 2).mean() + eps) * nw if norm else x
    tiling = StagedTiling(64, lanes, 2)
    bounds, ws, ys, y0s = [], [], [], []
    for n in parts:
        raw, w = staged_weight(qtype, n, K, rng)
        y0 = rng.standard_normal(n).astype(np.float32) if accumulate else np.full(n, np.nan, np.float32)
        yb = f32_buffer(dev, y0)
        lin = Linear(dev, upload(dev, raw, qtype, n, K), matvec=tiling, subgroups=True)
        assert lin.staged and "subgroupShuffleXor" in lin.q4_kernel([n], accumulate).source
        bounds.append(lin.bind(hb if norm else xb, yb, accumulate=accumulate))
        ws.append(w)
        ys.append(yb)
        y0s.append(y0 if accumulate else 0)
    out = f32_buffer(dev, np.full(parts[0], np.nan, np.float32))
    glu_op = (glu, GLU(dev, parts[0], glu).bind(ys[0], ys[1], out, step)) if glu else None
    with dev.recorder() as rec:
        if accumulate:
            bounds[0].record(rec, 1)
        else:
            group = MatvecGroup(bounds, glu=glu_op, norm=rms if norm else None)
            assert group.fused is not None and rms.absorbed == norm
            group.record(rec, 1)
    hq = q8_blocks(h.astype(np.float32))
    tol = 3e-4 if norm else TOL
    if glu:
        g, u = hq[0] @ ws[0].T, hq[0] @ ws[1].T
        a = (
            g * 0.5 * (1 + np.tanh(g / 2))
            if glu == "silu"
            else 0.5 * g * (1 + np.tanh(np.sqrt(2 / np.pi) * (g + 0.044715 * g**3)))
        )
        scale = (np.abs(hq[0]) @ np.abs(ws[0]).T) * (np.abs(hq[0]) @ np.abs(ws[1]).T)
        assert (np.abs(read_f32(dev, out, parts[0]) - a * u) / scale).max() < tol
    else:
        for n, w, yb, y0 in zip(parts, ws, ys, y0s):
            assert staged_error(read_f32(dev, yb, n)[None] - y0, h.astype(np.float32), w) < tol


def test_staged_subgroups_need_known_size(sg_device):
    """The staged kernel reduces through subgroups only where a team surely fits one subgroup: the
    adapter's reported minimum, or its vendor's (wgpu-native reports 4 everywhere; NVIDIA's is 32)."""
    from types import SimpleNamespace as NS
    from webllm_py.linear import StagedTiling, subgroup_min_size

    native = lambda info: NS(raw=NS(adapter=NS(info=info)))  # noqa: E731
    assert subgroup_min_size(native({"vendor_id": 0x10DE, "stackgroup_min_size": 4})) == 32
    assert subgroup_min_size(native({"vendor_id": 65541, "stackgroup_min_size": 4})) == 4  # lavapipe
    assert subgroup_min_size(NS(subgroup_min_size=16)) == 16 and subgroup_min_size(NS()) == 0
    rng = np.random.default_rng(18)
    raw, _ = make_weight("Q4_0", 8, 2048, rng)
    w = upload(sg_device, raw, "Q4_0", 8, 2048)
    n = subgroup_min_size(sg_device)
    for lanes in (2, 4, 8):
        src = Linear(sg_device, w, matvec=StagedTiling(64, lanes, 1)).q4_kernel([8], False).source
        assert ("subgroupShuffleXor" in src) == (lanes <= n)


@pytest.mark.parametrize("qtype", ["Q8_0", "Q6_K"])
def test_staged_8_6_bit_default_and_switch(device, monkeypatch, qtype):
    """Q8_0 and Q6_K take the staged kernel by default on GPU adapters (here lavapipe posing as one),
    at K = 8192 (1B down) with their own default tiling (16 lanes a row, where 4-bit rows prefetch),
    accumulating; KernelPolicy(staged_matvec=False) (the A/B switch) gives Q8_0 matvec_q4 (its 64-weight units)
    and Q6_K the generic matvec, K % 64 != 0 the generic one for both; vs numpy."""
    from webllm_py.formats.quants import GGMLType
    from webllm_py.linear import StagedTiling, staged_tiling

    rng = np.random.default_rng(19)
    N, K = 24, 8192
    raw, w = staged_weight(qtype, N, K, rng)
    wt = upload(device, raw, qtype, N, K)
    x = rng.standard_normal((1, K)).astype(np.float32)
    y0 = rng.standard_normal((1, N)).astype(np.float32)
    import dataclasses

    monkeypatch.setattr(device, "info", dataclasses.replace(device.info, is_fallback=False))
    lin = Linear(device, wt)
    assert (
        lin.staged and lin.q4 and lin.matvec_tiling == StagedTiling(256, 16, 1) == staged_tiling(K, qtype=wt.ggml_type)
    )
    assert staged_tiling(K, qtype=GGMLType.Q4_0).prefetch and staged_tiling(4096, qtype=wt.ggml_type) == staged_tiling(
        4096
    )
    generic = Linear(device, wt, policy=KernelPolicy(staged_matvec=False))
    assert not generic.staged and generic.plan.template == ("matvec_q4" if qtype == "Q8_0" else "matvec")
    for layer, err in ((lin, staged_error), (generic, scaled_error)):
        xb, yb = f32_buffer(device, x), f32_buffer(device, y0)
        with device.recorder() as rec:
            layer.bind(xb, yb, accumulate=True).record(rec, 1)
        assert err(read_f32(device, yb, N)[None] - y0, x, w) < TOL
    if qtype == "Q6_K":  # super-blocks of 256: every K is whole units
        return
    # K = 288: not whole 64-weight units; a StagedTiling request falls back to the generic kernel
    raw, w = staged_weight(qtype, 5, 288, rng)
    odd = Linear(device, upload(device, raw, qtype, 5, 288), matvec=StagedTiling(64, 2, 1))
    assert not odd.staged and not odd.q4
    x = rng.standard_normal((1, 288)).astype(np.float32)
    xb, yb = f32_buffer(device, x), f32_buffer(device, np.zeros((1, 5), np.float32))
    with device.recorder() as rec:
        odd.bind(xb, yb).record(rec, 1)
    assert scaled_error(read_f32(device, yb, 5)[None], x, w) < TOL


# --- the staged kernel with two int8 planes of x (StagedTiling.planes = 2): q and the rounding residual ---


@pytest.mark.parametrize("qtype", ["Q4_0", "Q4_1", "Q4_K", "Q8_0", "Q6_K"])
def test_staged_two_planes(device, qtype):
    """Against numpy over the same two-plane rounding (tight), and against the exact f32 product: within
    1.5e-4 of sum |x| |w| per output, a bound the one-plane kernel (run here too) misses by ~20x (its
    step is 254 times coarser). Prefetch on, 6 units over 4 lanes, rows past N, an all-zero block."""
    from webllm_py.linear import StagedTiling

    rng = np.random.default_rng(17)
    N, K = 37, 1536
    raw, w = staged_weight(qtype, N, K, rng)
    x = rng.standard_normal((1, K)).astype(np.float32)
    x[0, :32] = 0
    y0 = rng.standard_normal((1, N)).astype(np.float32)
    errs = {}
    for planes in (2, 1):
        lin = Linear(device, upload(device, raw, qtype, N, K), matvec=StagedTiling(32, 4, 2, True, planes))
        assert lin.staged
        for accumulate in (False, True):
            y = matvec_once(device, lin, x, y0, accumulate)
            assert staged_error(y, x, w, planes) < (TOL if planes == 1 else 3 * TOL)
            errs[planes, accumulate] = scaled_error(y, x, w)
    assert max(errs[2, a] for a in (False, True)) < 1.5e-4, errs
    assert min(errs[1, a] for a in (False, True)) > 1.5e-4, errs


@pytest.mark.parametrize(
    "qtype,glu,subgroups",
    [("Q4_K", "silu", True), ("Q6_K", None, False), ("Q4_0", "gelu_tanh", False), ("Q8_0", None, True)],
)
def test_staged_two_planes_fused(request, qtype, glu, subgroups):
    """Two planes in the fused forms with the RMSNorm folded in (Q/K/V, gate/up with the GLU), teams reduced
    through workgroup memory or subgroupShuffleXor, through the planner's policy (KernelPolicy.staged_planes)
    on a staged table tiling: near the exact f32 product."""
    from webllm_py.planner import staged_tiling

    device = request.getfixturevalue("sg_device" if subgroups else "device")
    rng = np.random.default_rng(19)
    K, eps = 1024, 1e-5
    parts = (40, 40) if glu else (40, 12, 9)
    rms, hb, step, h = _folded_norm(device, rng, K, eps, scale=3.0)
    tiling = staged_tiling(K, policy=KernelPolicy(staged_planes=2))
    assert tiling.planes == 2
    bounds, ws, ys = [], [], []
    for n in parts:
        raw, w = staged_weight(qtype, n, K, rng)
        yb = f32_buffer(device, np.full(n, np.nan, np.float32))
        lin = Linear(device, upload(device, raw, qtype, n, K), matvec=tiling, subgroups=subgroups)
        assert ("subgroupShuffleXor" in lin.q4_kernel([n], False).source) == subgroups
        bounds.append(lin.bind(hb, yb))
        ws.append(w)
        ys.append(yb)
    out = f32_buffer(device, np.full(parts[0], np.nan, np.float32))
    glu_op = (glu, GLU(device, parts[0], glu).bind(ys[0], ys[1], out, step)) if glu else None
    group = MatvecGroup(bounds, glu=glu_op, norm=rms)
    assert group.fused is not None and rms.absorbed
    with device.recorder() as rec:
        rms.record(rec, 1)
        group.record(rec, 1)
    if glu:
        g, u = h[0] @ ws[0].T, h[0] @ ws[1].T
        a = (
            g / (1 + np.exp(-g))
            if glu == "silu"
            else 0.5 * g * (1 + np.tanh(np.sqrt(2 / np.pi) * (g + 0.044715 * g**3)))
        )
        err = np.abs(read_f32(device, out, parts[0]) - a * u).max() / np.abs(a * u).max()
        assert err < 1e-4
    else:
        for n, w, yb in zip(parts, ws, ys):
            assert scaled_error(read_f32(device, yb, n)[None], h, w) < 1.5e-4


# --- the prestaged form (StagedTiling.prestaged): x quantized once per token by ops.QuantizeX ---


@pytest.mark.parametrize(
    "qtype,glu,norm,planes,subgroups",
    [
        ("Q4_0", None, False, 1, False),
        ("Q4_0", None, False, 2, True),
        ("Q4_K", None, True, 2, False),
        ("Q4_1", None, True, 1, True),
        ("Q6_K", "silu", True, 1, False),
        ("Q8_0", "gelu_tanh", True, 1, True),
    ],
)
def test_staged_prestaged(request, qtype, glu, norm, planes, subgroups):
    """quantize_x + matvec_q4s copying its blocks into workgroup memory against the staged kernel that
    quantizes x in each workgroup, over the same x: bit-identical without the norm (the same
    quantization rule, the same sums), the same within f32 rounding of 1 / rms with it; and against numpy
    over the same int8 rounding of x (times the norm weights, scaled by numpy's 1 / rms). Q/K/V (three
    parts whose workgroups straddle) or gate/up with the GLU; an all-zero block."""
    from dataclasses import replace

    from webllm_py.linear import StagedTiling
    from webllm_py.ops import QuantizeX, RMSNorm

    device = request.getfixturevalue("sg_device" if subgroups else "device")
    rng = np.random.default_rng(23)
    K, eps, offset = 768, 1e-5, 1.0 if glu == "gelu_tanh" else 0.0
    parts = (40, 40) if glu else ((40, 12, 9) if norm else (37,))
    x = (rng.standard_normal((1, K)) * 3).astype(np.float32)
    x[0, 64:96] = 0
    nw = rng.standard_normal(K).astype(np.float32)
    xb = f32_buffer(device, x)
    rms = RMSNorm(device, f32_buffer(device, nw), K, eps, weight_offset=offset) if norm else None
    staged = StagedTiling(32, 2, 2, True, planes)
    ws, lins = [], []
    for n in parts:
        raw, w = staged_weight(qtype, n, K, rng)
        ws.append(w)
        lins.append(Linear(device, upload(device, raw, qtype, n, K), matvec=staged, subgroups=subgroups))
    groups = staged.groups(parts[0], K) if glu else sum(staged.groups(n, K) for n in parts)
    n_out = 1 if glu else len(parts)
    quant = QuantizeX(device, K, planes, norm=rms)
    xq, xd = quant.buffers()
    outs = {}
    for form in (False, True):
        t = replace(staged, prestaged=form)
        kernel = lins[0].q4_kernel(list(parts), False, glu=glu, norm=rms, tiling=t)
        assert ("pq[" in kernel.source) == form and ("round(" in kernel.source) != form
        xs = [xq, xd] if form else [xb] + ([rms.weight] if norm else [])
        ys = [f32_buffer(device, np.full(parts[0] if glu else n, np.nan, np.float32)) for n in parts[:n_out]]
        bg = device.bind(kernel, [lin.weight.buffer for lin in lins] + xs + ys)
        with device.recorder() as rec:
            if form:
                quant.bind(xb, xq, xd).record(rec, 1)
            rec.dispatch(bg, groups)
        outs[form] = [read_f32(device, yb, parts[0] if glu else n) for yb, n in zip(ys, parts)]
    for a, b in zip(outs[False], outs[True]):
        if norm:
            np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-6 * np.abs(a).max())
        else:
            assert np.array_equal(a.view(np.uint32), b.view(np.uint32))
    xs64 = x[0].astype(np.float64)
    inv = 1 / np.sqrt((xs64**2).mean() + eps) if norm else 1.0
    xn = (x * (nw + np.float32(offset))).astype(np.float32) if norm else x
    if glu:
        hq = q8_blocks(xn, planes)[0]
        g, u = inv * (hq @ ws[0].T), inv * (hq @ ws[1].T)
        act = (
            g * 0.5 * (1 + np.tanh(g / 2))
            if glu == "silu"
            else 0.5 * g * (1 + np.tanh(np.sqrt(2 / np.pi) * (g + 0.044715 * g**3)))
        )
        scale = inv**2 * (np.abs(hq) @ np.abs(ws[0]).T) * (np.abs(hq) @ np.abs(ws[1]).T)
        assert (np.abs(outs[True][0] - act * u) / scale).max() < TOL
    else:
        for y, w in zip(outs[True], ws):
            assert staged_error(y[None] / inv, xn, w, planes) < TOL


# --- emit_next: the residual's producer (w_down / wo) writes the next prestaged matvec's x in its epilogue ---


def _read_bytes(device, buf, n: int) -> bytes:
    import asyncio

    return asyncio.run(device.read_buffer(buf, 0, n))


@pytest.mark.parametrize(
    "qtype,planes,subgroups,K,prod",
    [
        ("Q4_0", 1, False, 512, (64, 2, 1, False)),  # 2 lanes at K = 512: 32 rows a workgroup
        ("Q4_K", 2, True, 512, (64, 2, 1, False)),
        ("Q4_0", 1, True, 2048, (256, 8, 1, True)),  # the planner's for w_down / wo at 1B and 8B
    ],
)
def test_emit_next_chain(request, qtype, planes, subgroups, K, prod):
    """A residual-adding producer with emit_next (32 rows a workgroup) and the prestaged, norm-folded
    consumer (Q/K/V) reading what it wrote: the producer's residual against numpy; its quantized x and
    block sums of x^2 bit-identical to ops.QuantizeX over the same new residual; the consumer against
    numpy over the int8 rounding of RMSNorm's input scaled by numpy's 1 / rms."""
    from webllm_py.linear import StagedTiling
    from webllm_py.ops import QuantizeX, RMSNorm

    device = request.getfixturevalue("sg_device" if subgroups else "device")
    rng = np.random.default_rng(31)
    N, eps, offset = 512, 1e-5, 1.0 if planes == 2 else 0.0
    prod_t = StagedTiling(*prod)
    raw, w = staged_weight(qtype, N, K, rng)
    prod = Linear(device, upload(device, raw, qtype, N, K), matvec=prod_t, subgroups=subgroups)
    x = rng.standard_normal((1, K)).astype(np.float32)
    resid = (rng.standard_normal((1, N)) * 2).astype(np.float32)
    nw = rng.standard_normal(N).astype(np.float32)
    rms = RMSNorm(device, f32_buffer(device, nw), N, eps, weight_offset=offset)
    quant = QuantizeX(device, N, planes, norm=rms)
    eq, ed = quant.buffers()
    yb = f32_buffer(device, resid)
    kern = prod.q4_kernel([N], True, tiling=prod_t, emit_next=rms, emit_planes=planes)
    bg = device.bind(kern, [prod.weight.buffer, f32_buffer(device, x), yb, rms.weight, eq, ed])
    with device.recorder() as rec:
        rec.dispatch(bg, prod_t.groups(N, K))
    y = read_f32(device, yb, N)
    assert staged_error(y[None] - resid, x, w) < TOL
    # QuantizeX over the same f32 residual: the same bytes
    qq, qd = quant.buffers()
    with device.recorder() as rec:
        quant.bind(f32_buffer(device, y[None]), qq, qd).record(rec, 1)
    for a, b, n in ((eq, qq, planes * N), (ed, qd, QuantizeX.xd_bytes(N))):
        assert _read_bytes(device, a, n) == _read_bytes(device, b, n)
    # the consumer: fused Q/K/V with the norm folded in, prestaged from the producer's blocks
    parts = (64, 32, 32)
    cons_t = StagedTiling(32, 2, 2, True, planes, prestaged=True)
    ws, lins = [], []
    for n in parts:
        craw, cw = staged_weight("Q4_0", n, N, rng)
        ws.append(cw)
        lins.append(Linear(device, upload(device, craw, "Q4_0", n, N), matvec=cons_t, subgroups=subgroups))
    ck = lins[0].q4_kernel(list(parts), False, norm=rms, tiling=cons_t)
    outs = [f32_buffer(device, np.full(n, np.nan, np.float32)) for n in parts]
    bg = device.bind(ck, [lin.weight.buffer for lin in lins] + [eq, ed] + outs)
    with device.recorder() as rec:
        rec.dispatch(bg, sum(cons_t.groups(n, N) for n in parts))
    y32 = y.astype(np.float32)
    inv = 1 / np.sqrt((y**2).mean() + eps)
    xn = (y32 * (nw + np.float32(offset))).astype(np.float32)[None]
    for ob, n, cw in zip(outs, parts, ws):
        assert staged_error(read_f32(device, ob, n)[None] / inv, xn, cw, planes) < TOL


def test_emit_next_refused(device):
    """emit_next where a workgroup does not own exactly one block of the residual: a clear ValueError."""
    from webllm_py.linear import StagedTiling
    from webllm_py.ops import RMSNorm

    rng = np.random.default_rng(5)
    K = 512
    rms = RMSNorm(device, f32_buffer(device, np.ones(256, np.float32)), 256, 1e-5)
    for n, t, acc, match in (
        (256, StagedTiling(64, 2, 2), True, "32 rows per workgroup"),
        (256, StagedTiling(64, 2, 1), False, "accumulate"),
        (224, StagedTiling(64, 2, 1), True, "N % 256"),
        (256, MatvecTiling(64, 2, True), True, "staged tiling"),
    ):
        raw, _ = make_weight("Q4_0", n, K, rng)
        lin = Linear(device, upload(device, raw, "Q4_0", n, K), matvec=StagedTiling(64, 2, 1))
        with pytest.raises(ValueError, match=match):
            lin.q4_kernel([n], acc, tiling=t, emit_next=rms)


# --- emit_next with glu: the fused gate/up writes w_down's prestaged x in its epilogue (KernelPolicy.glu_emit) ---


def _glu_ref(hq: np.ndarray, wg: np.ndarray, wu: np.ndarray, act: str, inv: float = 1.0):
    """act(inv hq W_gate^T) * (inv hq W_up^T) in float64 from numpy, and the scale its f32 sums' error is
    measured against (inv^2 sum|hq||w_gate| * sum|hq||w_up| per output)."""
    g, u = inv * (hq @ wg.T), inv * (hq @ wu.T)
    a = (
        g * 0.5 * (1 + np.tanh(g / 2))
        if act == "silu"
        else 0.5 * g * (1 + np.tanh(np.sqrt(2 / np.pi) * (g + 0.044715 * g**3)))
    )
    return a * u, inv**2 * (np.abs(hq) @ np.abs(wg).T) * (np.abs(hq) @ np.abs(wu).T)


@pytest.mark.parametrize(
    "qtype,planes,subgroups,norm,prestaged,act,tiling",
    [
        ("Q4_0", 1, False, False, False, "silu", (64, 2, 1, False)),
        ("Q4_0", 2, True, True, True, "silu", (32, 2, 2, True)),
        ("Q4_1", 2, True, True, False, "gelu_tanh", (64, 2, 1, False)),
        ("Q4_K", 1, True, False, True, "silu", (32, 2, 2, False)),
        ("Q4_K", 2, False, True, True, "silu", (64, 2, 1, True)),
        ("Q8_0", 2, False, True, True, "gelu_tanh", (64, 2, 1, False)),
        ("Q8_0", 1, True, False, False, "silu", (32, 2, 2, False)),
        ("Q6_K", 1, False, True, False, "silu", (32, 2, 2, True)),
        ("Q6_K", 2, True, False, True, "silu", (64, 2, 1, False)),
    ],
)
def test_glu_emit_chain(request, qtype, planes, subgroups, norm, prestaged, act, tiling):
    """Gate/up with emit_next (glu, 32 rows a workgroup; x staged in its workgroups or prestaged, the ffn norm
    folded in or not) and the prestaged w_down reading what it wrote: the GLU output bit-identical to the same
    kernel's without the epilogue and against numpy; its quantized x bit-identical to ops.QuantizeX's (no norm)
    over that f32 output; w_down (y += ..., of the same type) against numpy over the int8 rounding of that
    output."""
    from dataclasses import replace

    from webllm_py.linear import StagedTiling
    from webllm_py.ops import QuantizeX, RMSNorm

    device = request.getfixturevalue("sg_device" if subgroups else "device")
    rng = np.random.default_rng(37)
    K, H, D, eps = 512, 512, 256, 1e-5
    t = StagedTiling(*tiling, planes, prestaged=prestaged)
    assert t.rows_per_group(K) == 32
    x = (rng.standard_normal((1, K)) * 2).astype(np.float32)
    x[0, 32:64] = 0  # an all-zero block of x
    nw = rng.standard_normal(K).astype(np.float32)
    rms = RMSNorm(device, f32_buffer(device, nw), K, eps) if norm else None
    ws, lins = [], []
    for _ in range(2):
        raw, w = staged_weight(qtype, H, K, rng)
        ws.append(w)
        lins.append(Linear(device, upload(device, raw, qtype, H, K), matvec=t, subgroups=subgroups))
    xb = f32_buffer(device, x)
    if prestaged:  # x quantized beforehand (as wo's emit_next gives it)
        quant = QuantizeX(device, K, planes, norm=rms)
        xq, xd = quant.buffers()
        with device.recorder() as rec:
            quant.bind(xb, xq, xd).record(rec, 1)
        xs = [xq, xd]
    else:
        xs = [xb] + ([rms.weight] if norm else [])
    emitted = QuantizeX(device, H, planes)  # (its buffers: where the epilogue writes)
    eq, ed = emitted.buffers()
    outs = {}
    for emit in (False, True):
        kern = lins[0].q4_kernel(
            [H, H], False, glu=act, norm=rms, tiling=t, emit_next=True if emit else None, emit_planes=planes
        )
        assert ("eq[" in kern.source) == emit and "enw" not in kern.source
        yb = f32_buffer(device, np.full(H, np.nan, np.float32))
        bg = device.bind(kern, [lin.weight.buffer for lin in lins] + xs + [yb] + ([eq, ed] if emit else []))
        with device.recorder() as rec:
            rec.dispatch(bg, t.groups(H, K))
        outs[emit] = read_f32(device, yb, H)
    h = outs[True]
    assert np.array_equal(outs[False].astype(np.float32).view(np.uint32), h.astype(np.float32).view(np.uint32))
    inv = 1 / np.sqrt((x.astype(np.float64) ** 2).mean() + eps) if norm else 1.0
    xn = (x * (nw + np.float32(0))).astype(np.float32) if norm else x
    ref, scale = _glu_ref(q8_blocks(xn, planes)[0], ws[0], ws[1], act, inv)
    assert (np.abs(h - ref) / scale).max() < (3e-4 if norm else TOL)  # norm: 1/rms's last bit (test_staged_fused)
    # QuantizeX over the same f32 GLU output: the same bytes (xd: the blocks' (dx, sum); no norm, no sums of x^2)
    qq, qd = emitted.buffers()
    with device.recorder() as rec:
        emitted.bind(f32_buffer(device, h[None]), qq, qd).record(rec, 1)
    for a, b, n in ((eq, qq, planes * H), (ed, qd, 8 * (H // 32))):
        assert _read_bytes(device, a, n) == _read_bytes(device, b, n)
    # w_down, prestaged from the epilogue's blocks, adding into the residual
    draw, dw = staged_weight(qtype, D, H, rng)
    down_t = replace(StagedTiling(64, 2, 1), planes=planes, prestaged=True)
    down = Linear(device, upload(device, draw, qtype, D, H), matvec=down_t, subgroups=subgroups)
    resid = rng.standard_normal(D).astype(np.float32)
    rb = f32_buffer(device, resid)
    bg = device.bind(down.q4_kernel([D], True, tiling=down_t), [down.weight.buffer, eq, ed, rb])
    with device.recorder() as rec:
        rec.dispatch(bg, down_t.groups(D, H))
    assert staged_error((read_f32(device, rb, D) - resid)[None], h.astype(np.float32)[None], dw, planes) < TOL


def test_glu_emit_refused(device):
    """emit_next on a fused gate/up where a workgroup does not own exactly one block of its output, or where the
    dispatch is no gate/up writing its output: a clear ValueError; and MatvecGroup.emit_into returns None
    there (no change: the group keeps its dispatch)."""
    from webllm_py.linear import StagedTiling

    rng = np.random.default_rng(6)
    K = 512
    for parts, t, acc, match in (
        ([256, 256], StagedTiling(32, 2, 1), False, "32 rows per workgroup"),
        ([256, 256], StagedTiling(64, 2, 1), True, "writing"),
        ([256, 128], StagedTiling(64, 2, 1), False, "one height"),
        ([224, 224], StagedTiling(64, 2, 1), False, "N % 256"),
        ([256, 256], MatvecTiling(64, 2, True), False, "staged tiling"),
    ):
        raw, _ = make_weight("Q4_0", parts[0], K, rng)
        lin = Linear(device, upload(device, raw, "Q4_0", parts[0], K), matvec=StagedTiling(64, 2, 1))
        with pytest.raises(ValueError, match=match):
            lin.q4_kernel(parts, acc, glu="silu", tiling=t, emit_next=True)
    # a group of 16 rows a workgroup: emit_into refuses and leaves its dispatch as it was
    H = 256
    xb = f32_buffer(device, rng.standard_normal((1, K)).astype(np.float32))
    step = device.buffer_from(struct.pack("<II", 0, 1))
    ys = [f32_buffer(device, np.zeros(H, np.float32)) for _ in range(3)]
    bounds = []
    for yb in ys[:2]:
        raw, _ = make_weight("Q4_0", H, K, rng)
        lin = Linear(device, upload(device, raw, "Q4_0", H, K), matvec=StagedTiling(32, 2, 1))
        bounds.append(lin.bind(xb, yb))
    group = MatvecGroup(bounds, glu=("silu", GLU(device, H, "silu").bind(ys[0], ys[1], ys[2], step)))
    before = list(group.runs)
    assert group.emit_into(1) is None and group.runs == before and group.emits is None
