"""What the browser device takes from Dawn, each behind its feature, through Dawn on Mesa 25 lavapipe
(webllm_py.dawn.DawnHost; Pyodide has no numpy, so the data goes in and out as base64 and the
references are numpy's, here):

- subgroups: requested where offered, the size from GPUAdapterInfo.subgroupMinSize, the staged matvec's
  subgroup team reduction (and the packed 8-bit dot products it stages x for) through Tint vs gguf-py's
  dequantize; the fallback (not requested: lavapipe is a CPU adapter, where the default leaves them
  off) reduces through workgroup memory, same reference;
- attention_step's merge of split-K slices across workgroups, forced on (the planner keeps it off on
  browsers: Tint's storageBarrier is workgroup-scoped), over many steps and four layers in one pass,
  with the f32 cache and the f16x2 one (f16 pairs in u32s: what a GPU without shader-f16, Dawn on NVIDIA,
  gets), vs numpy; and what the planner picks there instead: the step writing its slices' partials,
  merged by attention_combine; and that step applying Gemma 3's per-head q/k norms itself (with RoPE);
- attention_prefill's lanes form (L lanes per query row, scores summed by subgroupShuffleXor: what GPUs
  with subgroups get; forced here, lavapipe being a CPU adapter) and its thread-per-row form (GPUs without
  subgroups) through Tint, vs numpy.
The planner's rows for each feature and its absence: tests/test_planner.py (test_browser_gpu_*)."""

import base64

import numpy as np
import pytest

from webllm_py.dawn import DawnHost

from .attention_helpers import chunking, make_qkv, reference
from .linear_helpers import assert_close, make_weight, staged_error

pytestmark = pytest.mark.dawn


def _b64(a) -> str:
    return base64.b64encode(np.ascontiguousarray(a).tobytes()).decode()


def _f32(s: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(s), np.float32)


@pytest.fixture(scope="module")
def host():
    with DawnHost(timeout=120) as h:
        yield h


_MATVEC = """
import base64, js, struct
from webllm_py.gpu.browser import BrowserDevice
from webllm_py.formats.quants import GGMLType, TensorInfo
from webllm_py.formats.source import BytesSource
from webllm_py.linear import Linear
from webllm_py.planner import Adapter, MatvecTiling, StagedTiling
from webllm_py.weights import upload_tensor
dev = await BrowserDevice.create(use_subgroups={use_subgroups})
a = Adapter.of(dev)
raw = base64.b64decode({w!r})
w = upload_tensor(dev, BytesSource(raw), TensorInfo("w", ({K}, {N}), int(GGMLType.{qtype}), 0, len(raw)))
lin = Linear(dev, w, matvec={tiling})  # asked for: the planner's GPU rows, on this CPU adapter
src = lin.kernel("matvec", False).source
x, y = dev.buffer_from(base64.b64decode({x!r})), dev.create_buffer({N} * 4)
with dev.recorder() as rec:
    lin.bind(x, y).record(rec, 1)
out = base64.b64encode(await dev.read_buffer(y)).decode()
info = (await js.navigator.gpu.requestAdapter()).info
dev.destroy()
dict(features=sorted(dev.features), subgroup_min=a.subgroup_min, subgroups=a.subgroups, packed_dot=a.packed_dot,
     adapter_min=int(info.subgroupMinSize), template=lin.plan.template, shuffles="subgroupShuffleXor" in src,
     directive="enable subgroups;" in src, dot4="dot4I8Packed" in src, source=src, y=out)
"""


@pytest.mark.parametrize("use_subgroups", [True, None])
def test_staged_matvec_with_and_without_subgroups(host, use_subgroups):
    """True: subgroups asked for and granted, size 8 from the adapter info, teams of 8 lanes reduce by
    subgroupShuffleXor; None (the default on this CPU adapter): not requested, workgroup memory."""
    r, x, w = _matvec(host, "Q4_0", 45, 1024, "StagedTiling(64, 8, 1)", use_subgroups)
    assert r["template"] == "matvec_q4s" and r["packed_dot"] and r["dot4"]
    if use_subgroups:
        assert "subgroups" in r["features"] and r["subgroups"]
        assert r["subgroup_min"] == r["adapter_min"] == 8  # lavapipe's 256-bit SIMD: 8 lanes
        assert r["shuffles"] and r["directive"]
    else:
        assert "subgroups" not in r["features"] and not r["subgroups"] and r["subgroup_min"] == 0
        assert not r["shuffles"] and not r["directive"]
    assert staged_error(_f32(r["y"])[: w.shape[0]].astype(np.float64), x, w) < 2e-6


@pytest.mark.parametrize(
    "qtype,N,K,tiling,template",
    [
        ("Q4_1", 45, 320, "MatvecTiling(wg=64, rows=4)", "matvec_q4"),  # 4-bit rows, K % 256 != 0
        ("Q5_0", 29, 640, "MatvecTiling(wg=64, rows=4)", "matvec_q4"),  # 5-bit rows (Gemma-3's Q/K/V, gate/up)
        ("Q8_0", 29, 576, "MatvecTiling(wg=128, rows=3)", "matvec_q4"),  # 8-bit rows, K % 256 != 0 (an LM head)
        ("Q5_1", 29, 512, "MatvecTiling(wg=128, rows=3)", "matvec"),  # other types: the generic split-K matvec
    ],
)
def test_split_k_matvecs_with_subgroups(host, qtype, N, K, tiling, template):
    """The other kernels a GPU browser device now renders with subgroups (subgroupAdd reductions)
    compile under Tint's uniformity rules and match gguf-py's dequantize."""
    r, x, w = _matvec(host, qtype, N, K, tiling, True)
    assert r["template"] == template and r["directive"] and "subgroupAdd" in r["source"]
    assert_close(_f32(r["y"])[:N].astype(np.float64), x.astype(np.float64) @ w.T, x, w)


def _matvec(host, qtype, N, K, tiling, use_subgroups):
    rng = np.random.default_rng(7)
    raw, w = make_weight(qtype, N, K, rng)
    x = rng.standard_normal((1, K)).astype(np.float32)
    r = host.exec(
        _MATVEC.format(
            use_subgroups=use_subgroups,
            w=base64.b64encode(raw).decode(),
            x=_b64(x),
            N=N,
            K=K,
            qtype=qtype,
            tiling=tiling,
        )
    )
    return r, x, w


_STEP = """
import base64, random, struct
from webllm_py.gpu.browser import BrowserDevice
from webllm_py.attention import PagedAttention
from webllm_py.kv_cache import PagedKVCache
from webllm_py.planner import KernelPolicy, StepTiling
dev = await BrowserDevice.create()
nh, nkv, hd, L, N = {nh}, {nkv}, {hd}, {L}, {N}
cache = PagedKVCache(dev, L, nkv, hd, block_size=4, num_blocks=16, dtype={dtype!r})
random.Random(0).shuffle(cache._free)  # pages out of order
attn = PagedAttention(dev, cache, nh, nkv, hd, 8, fused=True, step_tiling=StepTiling(*{tiling}),
                      policy=KernelPolicy(step_merge={merge}))
assert attn.step_combine == (not {merge})
step, table = dev.create_buffer(8), dev.create_buffer(cache.table_buffer_size())
data = [[base64.b64decode(s) for s in layer] for layer in {data!r}]  # per layer: q, k, v, all positions
rows = [(nh * hd * 4, nkv * hd * 4, nkv * hd * 4)] * L
bufs = [[dev.create_buffer(n) for n in (*rows[i], rows[i][0])] for i in range(L)]
layers = [attn.bind(i, q, k, v, o, step, table) for i, (q, k, v, o) in enumerate(bufs)]
assert all(b.step is not None and (b.combine is None) == {merge} for b in layers)
outs = []
for pos in range(N):
    cache.ensure(0, pos + 1)
    dev.write_buffer(step, struct.pack("<2I", pos, 1))
    dev.write_buffer(table, cache.table_bytes(0))
    for i in range(L):
        for x, buf, n in zip(data[i], bufs[i], rows[i]):
            dev.write_buffer(buf, x[pos * n:(pos + 1) * n])
    with dev.recorder() as rec:  # the layers back to back in one pass, as a decode step records them
        for b in layers:
            b.record(rec, 1)
    for i in range(L):
        outs.append(await dev.read_buffer(bufs[i][3]))
dev.destroy()
base64.b64encode(b"".join(outs)).decode()
"""


@pytest.mark.parametrize("dtype", ["f32", "f16x2"])
def test_fused_step_merge_across_workgroups_on_dawn(host, dtype):
    """attention_step with up to 9 slices per kv head merged by the last workgroup to arrive, through
    Tint's SPIR-V: 4 layers x 44 steps (1 to 9 slices in use), every layer's output at every step vs
    numpy; the f32 cache, and the f16x2 one (f16 pairs packed in u32s: what a GPU without shader-f16,
    Dawn on NVIDIA, gets; its reference sees K/V rounded to f16)."""
    (nh, nkv, hd), L, N = (32, 8, 64), 4, 44
    _check_steps(host, (nh, nkv, hd), L, N, (64, 4, 9, 4), True, dtype)


def _check_steps(host, layout, L, N, tiling, merge, dtype):
    nh, nkv, hd = layout
    data = [make_qkv(N, 30 + i, (nh, nkv, hd)) for i in range(L)]
    got = _f32(
        host.exec(
            _STEP.format(
                nh=nh,
                nkv=nkv,
                hd=hd,
                L=L,
                N=N,
                dtype=dtype,
                tiling=tiling,
                merge=merge,
                data=[[_b64(x) for x in layer] for layer in data],
            )
        )
    )
    got = got.reshape(N, L, nh * hd)
    packed = dtype == "f16x2"
    for i, (q, k, v) in enumerate(data):
        if packed:
            k, v = k.astype(np.float16).astype(np.float32), v.astype(np.float16).astype(np.float32)
        # packed: WGSL lets f32 -> f16 round to either neighbour (numpy: the nearest), so a K/V value
        # may sit one f16 ulp away; 3 of 90,112 outputs were 3.7e-4 off here: atol 5e-4
        np.testing.assert_allclose(
            got[:, i], reference(q, k, v, nh, nkv), atol=5e-4 if packed else 2e-5, rtol=1e-3 if packed else 1e-4
        )


@pytest.mark.parametrize("tiling,dtype", [((64, 4, 9, 4), "f16x2"), ((32, 8, 16, 8), "f32")])
def test_fused_step_with_combine_on_dawn(host, tiling, dtype):
    """What the planner picks on Dawn GPUs: attention_step writing each slice's partials and
    attention_combine merging them in the next dispatch, through Tint: 2 layers x 36 steps (1 to 9,
    resp. 1 to 5 of 16 slices in use), every layer's output at every step vs numpy."""
    _check_steps(host, (32, 8, 64), 2, 36, tiling, False, dtype)


_PREFILL = """
import base64, random, struct
from webllm_py.gpu.browser import BrowserDevice
from webllm_py.attention import PagedAttention
from webllm_py.kv_cache import PagedKVCache
from webllm_py.planner import KernelPolicy, PrefillTiling
dev = await BrowserDevice.create(use_subgroups=True)
kernel = dev.kernel
def gpu_form(template, label="", **p):  # the GPU form of attention_prefill on this CPU adapter
    return kernel(template, label, **(dict(p, cpu_adapter=False) if template == "attention_prefill" else p))
dev.kernel = gpu_form
nh, nkv, hd = {layout}
cache = PagedKVCache(dev, 1, nkv, hd, block_size=4, num_blocks=16, dtype={dtype!r})
random.Random(0).shuffle(cache._free)  # pages out of order
attn = PagedAttention(dev, cache, nh, nkv, hd, 32, sliding_window={window}, softcap={softcap},
                      policy=KernelPolicy(prefill_attention=PrefillTiling(*{tiling})))
src = attn.prefill.source
data = [base64.b64decode(s) for s in {data!r}]  # q, k, v of all positions
rows = (nh * hd * 4, nkv * hd * 4, nkv * hd * 4)
bufs = [dev.create_buffer(32 * n) for n in rows] + [dev.create_buffer(32 * rows[0])]
step, table = dev.create_buffer(8), dev.create_buffer(cache.table_buffer_size())
b = attn.bind(0, *bufs, step, table)
outs, pos = [], 0
for c in {chunks}:
    cache.ensure(0, pos + c, first_new=pos)
    for x, buf, n in zip(data, bufs, rows):
        dev.write_buffer(buf, x[pos * n:(pos + c) * n])
    dev.write_buffer(step, struct.pack("<2I", pos, c))
    dev.write_buffer(table, cache.table_bytes(0))
    with dev.recorder() as rec:
        b.record(rec, c)
    outs.append((await dev.read_buffer(bufs[3]))[: c * rows[0]])
    pos += c
dev.destroy()
dict(shuffles="subgroupShuffleXor" in src, directive="enable subgroups;" in src,
     out=base64.b64encode(b"".join(outs)).decode())
"""


@pytest.mark.parametrize(
    "layout,tiling,dtype,window,softcap",
    [
        ((9, 3, 64), (4, 8, 4), "f16x2", 9, None),
        ((8, 2, 128), (4, 16, 8, 2), "f32", None, 5.0),
        # the thread-per-row form (GPUs without subgroups) at Gemma 3's heads, its dims unrolled
        ((4, 1, 256), (16, 32, 1), "f16x2", 9, None),
        ((4, 2, 6), (16, 32, 1), "f32", None, 5.0),
    ],
)
def test_prefill_attention_lanes_on_dawn(host, layout, tiling, dtype, window, softcap):
    """attention_prefill with 4 or 8 lanes per query row (and 2 rows per thread) through Tint (its
    uniformity analysis takes the shuffles; Chrome needs `enable subgroups;`), and with one thread per row
    (no subgroups): 45 positions in chunks of 32 and 7 (ragged against tq, several K/V tiles), every token's
    output vs numpy."""
    N = 45
    q, k, v = make_qkv(N, 5, layout)
    if softcap:
        q *= 4  # large scores so the cap matters
    r = host.exec(
        _PREFILL.format(
            layout=layout,
            dtype=dtype,
            window=window,
            softcap=softcap,
            tiling=tiling,
            chunks=[32] + chunking(N - 32, 7),
            data=[_b64(x) for x in (q, k, v)],
        )
    )
    assert r["shuffles"] == r["directive"] == (tiling[2] > 1)
    packed = dtype == "f16x2"
    if packed:
        k, v = k.astype(np.float16).astype(np.float32), v.astype(np.float16).astype(np.float32)
    ref = reference(q, k, v, layout[0], layout[1], window=window, softcap=softcap)
    got = _f32(r["out"]).reshape(N, -1)
    # packed: WGSL lets f32 -> f16 round to either neighbour (see _check_steps): atol 5e-4
    np.testing.assert_allclose(got, ref, atol=5e-4 if packed else 2e-5, rtol=1e-3 if packed else 1e-4)


_GLU_EMIT = """
import base64
from webllm_py.gpu.browser import BrowserDevice
from webllm_py.formats.quants import GGMLType, TensorInfo
from webllm_py.formats.source import BytesSource
from webllm_py.linear import Linear
from webllm_py.ops import QuantizeX
from webllm_py.planner import StagedTiling
from webllm_py.weights import upload_tensor
dev = await BrowserDevice.create(use_subgroups={use_subgroups})
K, H, planes = {K}, {H}, {planes}
t = StagedTiling(64, 2, 1, planes=planes)
ws = [upload_tensor(dev, BytesSource(base64.b64decode(s)), TensorInfo("w", (K, H), int(GGMLType.Q4_0), 0,
      len(base64.b64decode(s)))) for s in {ws!r}]
lin = Linear(dev, ws[0], matvec=t)
kern = lin.q4_kernel([H, H], False, glu="silu", tiling=t, emit_next=True, emit_planes=planes)
x, y = dev.buffer_from(base64.b64decode({x!r})), dev.create_buffer(4 * H)
quant = QuantizeX(dev, H, planes)
eq, ed = quant.buffers()
qq, qd = quant.buffers()
with dev.recorder() as rec:
    rec.dispatch(dev.bind(kern, [w.buffer for w in ws] + [x, y, eq, ed]), t.groups(H, K))
    quant.bind(y, qq, qd).record(rec, 1)
out = {{n: base64.b64encode(await dev.read_buffer(b)).decode() for n, b in (("y", y), ("eq", eq), ("ed", ed),
       ("qq", qq), ("qd", qd))}}
out["shuffles"] = "subgroupShuffleXor" in kern.source
dev.destroy()
out
"""


@pytest.mark.parametrize("use_subgroups,planes", [(True, 1), (None, 2)])
def test_glu_emit_on_dawn(host, use_subgroups, planes):
    """matvec_q4s's fused gate/up with emit_next (KernelPolicy.glu_emit: the GLU output also written as w_down's
    quantized x) through Tint, its teams reducing by subgroup shuffles or through workgroup memory: the GLU output against numpy over the int8 rounding of x, and the emitted bytes
    equal ops.QuantizeX's over that output on the same compiler."""
    from .linear_helpers import q8_blocks

    rng = np.random.default_rng(41)
    K, H = 512, 256
    raws, ws = zip(*(make_weight("Q4_0", H, K, rng) for _ in range(2)))
    x = rng.standard_normal((1, K)).astype(np.float32)
    r = host.exec(
        _GLU_EMIT.format(
            use_subgroups=use_subgroups,
            K=K,
            H=H,
            planes=planes,
            ws=[base64.b64encode(raw).decode() for raw in raws],
            x=_b64(x),
        )
    )
    assert r["shuffles"] == bool(use_subgroups)  # the team reduction: subgroup shuffles, or workgroup memory
    hq = q8_blocks(x, planes)[0]
    g, u = hq @ ws[0].T, hq @ ws[1].T
    ref = g * 0.5 * (1 + np.tanh(g / 2)) * u
    scale = (np.abs(hq) @ np.abs(ws[0]).T) * (np.abs(hq) @ np.abs(ws[1]).T)
    assert (np.abs(_f32(r["y"])[:H] - ref) / scale).max() < 1e-5
    assert base64.b64decode(r["eq"]) == base64.b64decode(r["qq"])
    assert base64.b64decode(r["ed"])[: 8 * (H // 32)] == base64.b64decode(r["qd"])[: 8 * (H // 32)]


_STEP_QK = """
import base64, random, struct
from webllm_py.gpu.browser import BrowserDevice
from webllm_py.attention import PagedAttention
from webllm_py.kv_cache import PagedKVCache
from webllm_py.ops import RMSNorm, RoPE
from webllm_py.planner import KernelPolicy, StepTiling
dev = await BrowserDevice.create()
nh, nkv, hd, N = {nh}, {nkv}, {hd}, {N}
cache = PagedKVCache(dev, 1, nkv, hd, block_size=4, num_blocks=16, dtype="f32")
random.Random(0).shuffle(cache._free)
attn = PagedAttention(dev, cache, nh, nkv, hd, 8, fused=True, step_tiling=StepTiling(64, 4, 4, 4),
                      policy=KernelPolicy(step_merge=False))
step, table = dev.create_buffer(8), dev.create_buffer(cache.table_buffer_size())
q_in, k, v = (base64.b64decode(s) for s in {data!r})
wq, wk = dev.buffer_from(base64.b64decode({wq!r})), dev.buffer_from(base64.b64decode({wk!r}))
rows = (nh * hd * 4, nkv * hd * 4, nkv * hd * 4)
qp, kp, vb, qb, kb, ob = (dev.create_buffer(n) for n in (*rows, rows[0], rows[1], rows[0]))
qn = RMSNorm(dev, wq, hd, 1e-6, weight_offset=1.0).bind(qp, qb, step, rows_per_token=nh)
kn = RMSNorm(dev, wk, hd, 1e-6, weight_offset=1.0).bind(kp, kb, step, rows_per_token=nkv)
rope = RoPE(dev, {inv_freq!r}, nh, nkv, hd, "halves").bind(qb, kb, step)
att = attn.bind(0, qb, kb, vb, ob, step, table, rope=rope, qk_norm=(qn, kn))
assert qn.absorbed and kn.absorbed and rope.absorbed and att.combine is not None
outs = []
for pos in range(N):
    cache.ensure(0, pos + 1)
    dev.write_buffer(step, struct.pack("<2I", pos, 1))
    dev.write_buffer(table, cache.table_bytes(0))
    for x, buf, n in zip((q_in, k, v), (qp, kp, vb), rows):
        dev.write_buffer(buf, x[pos * n:(pos + 1) * n])
    with dev.recorder() as rec:  # the layer's order: the norms and RoPE (skipped: folded), attention
        for op in (qn, kn, rope, att):
            op.record(rec, 1)
    outs.append(await dev.read_buffer(ob))
dev.destroy()
base64.b64encode(b"".join(outs)).decode()
"""


def test_step_with_qk_norm_on_dawn(host):
    """Gemma 3's per-head q/k RMSNorms applied inside attention_step (with its RoPE, the slices merged by
    attention_combine: what Dawn on a GPU runs), through Tint, over 20 decode steps of Gemma-3-270M's heads
    (4 q heads, 1 kv head of 256) vs numpy's norms, RoPE and attention."""
    from .attention_helpers import head_norm_reference, rope_reference

    (nh, nkv, hd), N, eps = (4, 1, 256), 20, 1e-6
    rng = np.random.default_rng(41)
    q, k, v = make_qkv(N, 42, (nh, nkv, hd))
    q, k = q * rng.uniform(0.1, 8.0, (N, 1)), k * rng.uniform(0.1, 8.0, (N, 1))
    q, k = q.astype(np.float32), k.astype(np.float32)
    wq, wk = rng.standard_normal(hd).astype(np.float32), rng.standard_normal(hd).astype(np.float32)
    inv_freq = [10000.0 ** (-2 * i / hd) for i in range(hd // 2)]
    qkv = [_b64(x) for x in (q, k, v)]
    got = _f32(
        host.exec(_STEP_QK.format(nh=nh, nkv=nkv, hd=hd, N=N, wq=_b64(wq), wk=_b64(wk), inv_freq=inv_freq, data=qkv))
    ).reshape(N, nh * hd)

    pos = np.arange(N)
    qr = rope_reference(head_norm_reference(q, nh, hd, wq, eps, 1.0), pos, inv_freq, "halves").reshape(N, nh * hd)
    kr = rope_reference(head_norm_reference(k, nkv, hd, wk, eps, 1.0), pos, inv_freq, "halves").reshape(N, nkv * hd)
    np.testing.assert_allclose(got, reference(qr, kr, v, nh, nkv), atol=2e-5, rtol=1e-4)
