"""Paged attention kernels (kv_write + attention_decode / attention_prefill) vs a numpy reference of
causal softmax attention with GQA, computed in float64 from the same q/k/v.

Tolerance: f32 cache atol 2e-5 + rtol 1e-4 (outputs are O(1) averages of N(0,1) values);
f16 cache (and f16x2: f16 pairs packed in u32s, for adapters without shader-f16): the reference uses K/V
rounded to f16 as well, same tolerance x10."""

import asyncio
import struct

import numpy as np
import pytest

from webllm_py.attention import StepTiling

from .attention_helpers import HD, KV, H, Harness, chunking, make_qkv, reference, shuffled_cache


def f16_round(x):
    return x.astype(np.float16).astype(np.float32)


def cache_dtype(f16) -> str:
    """A test row's cache: True f16, False f32, or a dtype name ("f16x2")."""
    return {True: "f16", False: "f32"}.get(f16, f16)


pytestmark = pytest.mark.gpu


@pytest.mark.parametrize(
    "name,chunks",
    [
        ("whole", lambda N: [N]),
        ("by7", lambda N: chunking(N, 7)),
        ("by_token", lambda N: [1] * N),
        ("prompt_then_decode", lambda N: [37] + [1] * (N - 37)),
    ],
)
def test_attention_matches_numpy(device, name, chunks):
    N = 53
    q, k, v = make_qkv(N, 1)
    h = Harness(device, shuffled_cache(device), max_tokens=64)
    got = h.run(0, q, k, v, chunks(N))
    assert h.cache.blocks(0) != sorted(h.cache.blocks(0))  # really non-contiguous pages
    np.testing.assert_allclose(got, reference(q, k, v, H, KV), atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("window", [5, 16])
def test_sliding_window(device, window):
    N = 41
    q, k, v = make_qkv(N, 2)
    ref = reference(q, k, v, H, KV, window=window)
    for chunks in ([N], chunking(N, 7), [20] + [1] * (N - 20)):
        h = Harness(device, shuffled_cache(device, seed=3), max_tokens=64, sliding_window=window)
        np.testing.assert_allclose(h.run(0, q, k, v, chunks), ref, atol=2e-5, rtol=1e-4)


def test_softcap_and_scale(device):
    N = 30
    q, k, v = make_qkv(N, 4)
    q *= 4  # large scores so the cap matters
    ref = reference(q, k, v, H, KV, scale=0.25, softcap=5.0)
    h = Harness(device, shuffled_cache(device), max_tokens=32, scale=0.25, softcap=5.0)
    np.testing.assert_allclose(h.run(0, q, k, v, [11, 1, 1, 17]), ref, atol=2e-5, rtol=1e-4)


def test_f16_cache(device):
    if not device.has_f16:
        pytest.skip("adapter has no shader-f16")
    N = 45
    q, k, v = make_qkv(N, 5)
    ref = reference(q, k.astype(np.float16).astype(np.float32), v.astype(np.float16).astype(np.float32), H, KV)
    h = Harness(device, shuffled_cache(device, dtype="f16"), max_tokens=64)
    np.testing.assert_allclose(h.run(0, q, k, v, [30] + [1] * 15), ref, atol=2e-4, rtol=1e-3)


@pytest.mark.parametrize("splits", [1, 3])
def test_packed_cache(device, splits):
    """The f16x2 cache (no shader-f16 needed) through kv_write, attention_prefill and split-K
    attention_decode: the kernels CPU adapters and browser GPUs without shader-f16 run."""
    N = 45
    q, k, v = make_qkv(N, 5)
    ref = reference(q, f16_round(k), f16_round(v), H, KV)
    h = Harness(device, shuffled_cache(device, dtype="f16x2"), max_tokens=64, fused=False, decode_splits=splits)
    assert "unpack2x16float" in h.attn.decode.source and "enable f16" not in h.attn.decode.source
    np.testing.assert_allclose(h.run(0, q, k, v, [30] + [1] * 15), ref, atol=2e-4, rtol=1e-3)


def test_long_sequence_decode_crosses_many_chunks(device):
    """~100 positions with block_size 3 and decode chunks of 64: online-softmax rescaling across chunks."""
    N = 100
    q, k, v = make_qkv(N, 6)
    h = Harness(device, shuffled_cache(device, num_blocks=40, block_size=3), max_tokens=64)
    got = h.run(0, q, k, v, [60, 38, 1, 1])
    np.testing.assert_allclose(got, reference(q, k, v, H, KV), atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("splits", [1, 3, 16, 56])
def test_decode_split_k(device, splits):
    """Split-K decode (slices merged by attention_combine) equals the reference for any number of
    slices, including more slices than chunks (empty ones) and with a sliding window."""
    N = 90
    q, k, v = make_qkv(N, 7)
    for window in (None, 70):
        h = Harness(
            device,
            shuffled_cache(device, num_blocks=40, block_size=4),
            max_tokens=64,
            decode_splits=splits,
            decode_wg=16,
            sliding_window=window,
        )
        got = h.run(0, q, k, v, [40] + [1] * 50)
        np.testing.assert_allclose(got, reference(q, k, v, H, KV, window=window), atol=2e-5, rtol=1e-4)


# --- attention_step: one decode token in one dispatch (what GPUs run; forced here on any adapter) ---

LAYOUTS = {"8b": (32, 8, 128), "1b": (32, 8, 64), "smollm2": (H, KV, HD), "gemma3": (4, 1, 256)}


@pytest.mark.parametrize(
    "layout,f16,tiling,window,softcap",
    [
        ("8b", True, StepTiling(128, 32, 32, 32), None, None),  # the GPU default, several slices
        ("1b", True, StepTiling(128, 32, 16, 32), 29, None),  # 2 position groups per V item; window
        ("1b", False, StepTiling(64, 16, 1, 16), None, 5.0),  # one workgroup per kv head, softcap
        ("smollm2", False, StepTiling(32, 8, 56, 8), 70, None),  # GROUP 3, 2 output vec4s per thread, empty slices
        ("smollm2", True, StepTiling(16, 8, 5, 24), None, None),  # 3 output vec4s per thread, slices of 3 chunks
        ("smollm2", False, StepTiling(256, 32, 4, 32), None, None),  # 5 position groups: 32 % 5 != 0
        ("8b", "f16x2", StepTiling(128, 32, 32, 32), None, None),  # packed f16 pairs, several slices
        ("smollm2", "f16x2", StepTiling(32, 8, 56, 8), 70, None),  # packed, GROUP 3, window
        ("gemma3", False, StepTiling(64, 16, 4, 16), None, 5.0),  # head_dim 256, one kv head
        ("1b", False, StepTiling(512, 4, 3, 4), 29, None),  # 8 position groups > 4-position chunks and slices
    ],
)
def test_step_matches_numpy(device, layout, f16, tiling, window, softcap):
    """Decode tokens through attention_step after a prefill chunk (and a prefill chunk after decode
    tokens: it reads the rows the step wrote), block size 3 so slices and chunks cross blocks;
    f16 caches are checked against K/V rounded to f16, as the cache stores them."""
    if f16 is True and not device.has_f16:
        pytest.skip("adapter has no shader-f16")
    lay = LAYOUTS[layout]
    N = 61
    q, k, v = make_qkv(N, 21, lay)
    if softcap:
        q *= 4  # large scores so the cap matters
    h = Harness(
        device,
        shuffled_cache(device, num_blocks=24, block_size=3, layout=lay, dtype=cache_dtype(f16)),
        max_tokens=32,
        layout=lay,
        fused=True,
        step_tiling=tiling,
        sliding_window=window,
        softcap=softcap,
    )
    assert h.bound.step is not None and h.attn.decode is None
    got = h.run(0, q, k, v, [21] + [1] * 30 + [3] + [1] * 7)
    kr, vr = (f16_round(k), f16_round(v)) if f16 else (k, v)
    ref = reference(q, kr, vr, lay[0], lay[1], window=window, softcap=softcap)
    tol = dict(atol=2e-4, rtol=1e-3) if f16 else dict(atol=2e-5, rtol=1e-4)
    np.testing.assert_allclose(got, ref, **tol)


@pytest.mark.parametrize(
    "pairs,rot_dim,f16",
    [
        ("adjacent", 64, True),
        ("halves", 64, False),
        ("halves", 32, True),
        ("halves", 64, "f16x2"),
        ("adjacent", 64, "f16x2"),
    ],
)
def test_step_with_rope(device, pairs, rot_dim, f16):
    """attention_step rotates q and the new k itself (full rotary: RoPE absorbed, its dispatch
    skipped for single tokens); with partial rotary the RoPE dispatch runs and the step gets q/k
    rotated. Every step equals numpy's RoPE then attention; the cache holds the rotated k."""
    from webllm_py.ops import RoPE
    from .attention_helpers import rope_reference

    if f16 is True and not device.has_f16:
        pytest.skip("adapter has no shader-f16")
    N, T0 = 40, 12
    q, k, v = make_qkv(N, 22)
    inv_freq = [10000.0 ** (-2 * i / rot_dim) for i in range(rot_dim // 2)]
    h = Harness(
        device,
        shuffled_cache(device, num_blocks=16, block_size=4, dtype=cache_dtype(f16)),
        max_tokens=32,
        fused=True,
        step_tiling=StepTiling(64, 8, 8, 8),
    )
    rope = RoPE(device, inv_freq, H, KV, HD, pairs).bind(h.q, h.k, h.step)
    attention = h.attn.bind(0, h.q, h.k, h.v, h.o, h.step, h.table, rope=rope)
    assert attention.step is not None and rope.absorbed == (rot_dim == HD)

    class Layer:  # the layer's order: RoPE (skipped for one token when absorbed), then attention
        def record(self, rec, n):
            rope.record(rec, n)
            attention.record(rec, n)

    h.bound = Layer()
    got = h.run(0, q, k, v, [T0] + [1] * (N - T0 - 5) + [5])
    pos = np.arange(N)
    qr = rope_reference(q.reshape(N, H, HD), pos, inv_freq, pairs).reshape(N, H * HD)
    kr = rope_reference(k.reshape(N, KV, HD), pos, inv_freq, pairs).reshape(N, KV * HD)
    if f16:
        kr, v = f16_round(kr), f16_round(v)
    tol = dict(atol=2e-4, rtol=1e-3) if f16 else dict(atol=2e-5, rtol=1e-4)
    np.testing.assert_allclose(got, reference(qr, kr, v, H, KV), **tol)


@pytest.mark.parametrize(
    "layout,pairs,merge,offset",
    [
        ("gemma3", "halves", False, 1.0),  # Gemma-3-270M's heads, its slices merged by attention_combine (Dawn)
        ("gemma3", "halves", None, 1.0),  # ... merged in the step (native)
        ("smollm2", "adjacent", False, 0.0),  # GROUP 3, adjacent pairs
        ("1b", "adjacent", None, 0.0),
    ],
)
def test_step_with_qk_norm(device, layout, pairs, merge, offset):
    """Per-head q and k RMSNorms (Gemma 3's q_norm, k_norm) before a full-rotary RoPE: single-token steps apply
    both inside attention_step (the norms and RoPE absorbed: their dispatches skipped), a prefill chunk runs
    them as written; every step equals numpy's norms, RoPE and attention; the cache holds the normed, rotated k."""
    from webllm_py.ops import RMSNorm, RoPE
    from webllm_py.planner import KernelPolicy
    from .attention_helpers import head_norm_reference, rope_reference

    (nh, nkv, hd), N, T0, eps = LAYOUTS[layout], 24, 5, 1e-6
    rng = np.random.default_rng(31)
    q, k, v = make_qkv(N, 23, (nh, nkv, hd))
    q, k = q * rng.uniform(0.1, 8.0, (N, 1)), k * rng.uniform(0.1, 8.0, (N, 1))  # rows far from unit rms
    wq, wk = rng.standard_normal(hd).astype(np.float32), rng.standard_normal(hd).astype(np.float32)
    inv_freq = [10000.0 ** (-2 * i / hd) for i in range(hd // 2)]
    h = Harness(
        device,
        shuffled_cache(device, num_blocks=16, block_size=4, layout=(nh, nkv, hd)),
        max_tokens=8,
        layout=(nh, nkv, hd),
        fused=True,
        step_tiling=StepTiling(64, 4, 4, 4),
        policy=KernelPolicy(step_merge=merge),
    )
    # h.q, h.k take the projections (before the norms); the norms write qn, kn, which RoPE and attention read
    qn_buf, kn_buf = (device.create_buffer(8 * n * hd * 4) for n in (nh, nkv))
    qnorm = RMSNorm(device, device.buffer_from(wq.tobytes()), hd, eps, weight_offset=offset)
    knorm = RMSNorm(device, device.buffer_from(wk.tobytes()), hd, eps, weight_offset=offset)
    qn = qnorm.bind(h.q, qn_buf, h.step, rows_per_token=nh)
    kn = knorm.bind(h.k, kn_buf, h.step, rows_per_token=nkv)
    rope = RoPE(device, inv_freq, nh, nkv, hd, pairs).bind(qn_buf, kn_buf, h.step)
    attention = h.attn.bind(0, qn_buf, kn_buf, h.v, h.o, h.step, h.table, rope=rope, qk_norm=(qn, kn))
    assert rope.absorbed and qn.absorbed and kn.absorbed
    assert (attention.combine is not None) == (merge is False)

    class Layer:  # the layer's order: the norms and RoPE (skipped for one token), then attention
        def record(self, rec, n):
            for op in (qn, kn, rope, attention):
                op.record(rec, n)

    h.bound = Layer()
    got = h.run(0, q, k, v, [T0] + [1] * (N - T0))

    pos = np.arange(N)
    qr = rope_reference(head_norm_reference(q, nh, hd, wq, eps, offset), pos, inv_freq, pairs).reshape(N, nh * hd)
    kr = rope_reference(head_norm_reference(k, nkv, hd, wk, eps, offset), pos, inv_freq, pairs).reshape(N, nkv * hd)
    f16 = h.attn.cache.dtype != "f32"
    if f16:
        kr, v = f16_round(kr), f16_round(v)
    tol = dict(atol=2e-4, rtol=1e-3) if f16 else dict(atol=2e-5, rtol=1e-4)
    np.testing.assert_allclose(got, reference(qr, kr, v, nh, nkv), **tol)


@pytest.mark.parametrize(
    "layout,f16,tiling,window,rope",
    [
        ("1b", True, StepTiling(64, 4, 9, 4), None, "adjacent"),  # 1 to 9 slices used, empty ones at 0
        ("smollm2", False, StepTiling(32, 8, 56, 8), 70, "halves"),  # GROUP 3, many empty slices, window
        ("smollm2", "f16x2", StepTiling(16, 8, 5, 24), None, None),  # packed cache; slices of 3 chunks
        ("smollm2", False, StepTiling(256, 4, 9, 4), None, None),  # 5 position groups > 4-position chunks
    ],
)
def test_step_combine_matches_numpy(device, layout, f16, tiling, window, rope):
    """attention_step writing its slices' partials and attention_combine merging them (the layout
    for devices whose storageBarrier() is workgroup scope only): two dispatches per token, no
    arrival counters; every decode step of three layers recorded in one pass (the partials buffer
    is shared) equals numpy's RoPE then attention."""
    from webllm_py.ops import RoPE
    from webllm_py.planner import KernelPolicy
    from .attention_helpers import rope_reference

    if f16 is True and not device.has_f16:
        pytest.skip("adapter has no shader-f16")
    (nh, nkv, hd), L, N, T0 = LAYOUTS[layout], 3, 40, 5
    cache = shuffled_cache(
        device, num_blocks=24, block_size=2, layout=(nh, nkv, hd), n_layers=L, dtype=cache_dtype(f16)
    )
    h = Harness(
        device,
        cache,
        max_tokens=8,
        layout=(nh, nkv, hd),
        fused=True,
        step_tiling=tiling,
        sliding_window=window,
        policy=KernelPolicy(step_merge=False),
    )
    assert h.attn.step_combine and not hasattr(h.attn, "scratch")
    inv_freq = [10000.0 ** (-2 * i / hd) for i in range(hd // 2)]
    data = [make_qkv(N, 40 + i, (nh, nkv, hd)) for i in range(L)]
    bufs = [[device.create_buffer(x.shape[1] * 4 * T0) for x in (*data[i], data[i][0])] for i in range(L)]
    layers = []
    for i, (q, k, v, o) in enumerate(bufs):
        rp = RoPE(device, inv_freq, nh, nkv, hd, rope).bind(q, k, h.step) if rope else None
        att = h.attn.bind(i, q, k, v, o, h.step, h.table, rope=rp)
        assert att.step is not None and att.combine is not None and att.decode is None
        layers.append((rp, att))
    pos = np.arange(N)
    refs = []
    for q, k, v in data:
        if rope:
            q = rope_reference(q.reshape(N, nh, hd), pos, inv_freq, rope).reshape(N, nh * hd)
            k = rope_reference(k.reshape(N, nkv, hd), pos, inv_freq, rope).reshape(N, nkv * hd)
        refs.append(reference(q, f16_round(k) if f16 else k, f16_round(v) if f16 else v, nh, nkv, window=window))
    p0 = 0
    for T in [T0] + [1] * (N - T0):  # a prefill chunk, then decode tokens that read its rows
        cache.ensure(0, p0 + T, first_new=p0)
        device.write_buffer(h.step, struct.pack("<2I", p0, T))
        device.write_buffer(h.table, cache.table_bytes(0))
        for i in range(L):
            for x, buf in zip(data[i], bufs[i]):
                device.write_buffer(buf, np.ascontiguousarray(x[p0 : p0 + T]))
        with device.recorder() as rec:
            for rp, att in layers:
                if rp is not None:
                    rp.record(rec, T)
                att.record(rec, T)
        for i in range(L):
            got = np.frombuffer(asyncio.run(device.read_buffer(bufs[i][3])), np.float32)[: T * nh * hd]
            np.testing.assert_allclose(
                got.reshape(T, -1), refs[i][p0 : p0 + T], atol=2e-4 if f16 else 2e-5, rtol=1e-3 if f16 else 1e-4
            )
        p0 += T


def test_step_merge_across_layers_and_steps(device):
    """The slices' merge through the shared scratch buffer: four layers recorded back to back in one
    pass (each dispatch must find the arrival counters back at 0), 1 to 9 slices in use as the
    context grows, every layer's output checked at every step."""
    (nh, nkv, hd), L, N = LAYOUTS["1b"], 4, 44
    cache = shuffled_cache(device, num_blocks=16, block_size=4, layout=(nh, nkv, hd), n_layers=L)
    h = Harness(device, cache, max_tokens=8, layout=(nh, nkv, hd), fused=True, step_tiling=StepTiling(64, 4, 9, 4))
    data = [make_qkv(N, 30 + i, (nh, nkv, hd)) for i in range(L)]  # each layer its own q/k/v
    bufs = [[device.create_buffer(x.shape[1] * 4) for x in (*data[i], data[i][0])] for i in range(L)]
    layers = [h.attn.bind(i, q, k, v, o, h.step, h.table) for i, (q, k, v, o) in enumerate(bufs)]
    for pos in range(N):
        cache.ensure(0, pos + 1)
        device.write_buffer(h.step, struct.pack("<2I", pos, 1))
        device.write_buffer(h.table, cache.table_bytes(0))
        for i in range(L):
            for x, buf in zip(data[i], bufs[i]):
                device.write_buffer(buf, np.ascontiguousarray(x[pos]))
        with device.recorder() as rec:
            for b in layers:
                b.record(rec, 1)
        for i in range(L):
            got = np.frombuffer(asyncio.run(device.read_buffer(bufs[i][3])), np.float32)
            q, k, v = (x[: pos + 1] for x in data[i])
            np.testing.assert_allclose(got, reference(q, k, v, nh, nkv)[-1], atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize(
    "form,planes,tiling",
    [
        ("merge", 1, StepTiling(64, 4, 9, 4)),  # attention_step merging its slices (1 to 9 in use)
        ("merge", 2, StepTiling(128, 32, 1, 32)),  # one slice: the step writes out directly
        ("combine", 1, StepTiling(64, 4, 9, 4)),  # the step's partials merged by attention_combine
        ("combine-only", 2, StepTiling(64, 4, 9, 4)),  # attention_combine writing the quantized x alone
        ("decode", 1, None),  # attention_decode + attention_combine (CPU adapters' kernels)
    ],
)
def test_emit_matches_quantize_x(device, form, planes, tiling):
    """BoundAttention.emit_into: the decode step also writes its output as wo's prestaged x. Every step's
    emitted bytes equal ops.QuantizeX's over the f32 output the same dispatches wrote (bit-identical: the
    q8_block rule over the same values), and, dequantized, numpy's attention within half a quantization step
    (plus the f32 tolerance); with write_out off (attention_combine only) the same bytes as with it on."""
    from webllm_py.ops import QuantizeX
    from webllm_py.planner import KernelPolicy

    (nh, nkv, hd), N = (8, 2, 64), 40
    K = nh * hd
    kw = dict(fused=form != "decode", step_tiling=tiling, decode_splits=4 if form == "decode" else None)
    kw["policy"] = KernelPolicy(step_merge=form == "merge")
    hs = []
    for write_out in (True, False) if form == "combine-only" else (True,):
        cache = shuffled_cache(device, num_blocks=16, block_size=4, layout=(nh, nkv, hd))
        h = Harness(device, cache, max_tokens=8, layout=(nh, nkv, hd), **kw)
        eq, ed = h.bound.emit_into(planes, write_out=write_out)
        assert (h.bound.step is not None) == (form != "decode") and (h.bound.combine is None) == (form == "merge")
        hs.append((h, eq, ed))
    quant = QuantizeX(device, K, planes)
    qq, qd = quant.buffers()
    q, k, v = make_qkv(N, 7, (nh, nkv, hd))
    ref = reference(q, k, v, nh, nkv)
    T0 = 5
    for h, _, _ in hs:
        h.step_(0, 0, q[:T0], k[:T0], v[:T0])
    for pos in range(T0, N):
        got, outs = [], []
        for h, eq, ed in hs:  # (the harnesses share the scratch eq, ed: read after each)
            outs.append(h.step_(0, pos, q[pos : pos + 1], k[pos : pos + 1], v[pos : pos + 1]))
            got.append((_bytes(device, eq, planes * K), _bytes(device, ed, 4 * K // 16)))
        assert all(g == got[0] for g in got)
        out = outs[0]
        with device.recorder() as rec:
            quant.bind(hs[0][0].o, qq, qd).record(rec, 1)
        assert got[0][0] == _bytes(device, qq, planes * K)
        assert got[0][1] == _bytes(device, qd, 4 * K // 16)  # (dx, dx sum q) per block
        np.testing.assert_allclose(out[0], ref[pos], atol=2e-5, rtol=1e-4)
        # dequantized: q dx (+ r dx / 254) within half a step of numpy's output
        qs = np.frombuffer(got[0][0], np.int8).astype(np.float64).reshape(planes, K // 32, 32)
        dx = np.frombuffer(got[0][1], np.float32)[: 2 * K // 32 : 2].astype(np.float64)[:, None]
        deq = qs[0] * dx + (qs[1] * dx / 254 if planes == 2 else 0)
        step = np.abs(ref[pos]).reshape(-1, 32).max(1, keepdims=True) / 127 / (254 if planes == 2 else 1)
        assert (np.abs(deq - ref[pos].reshape(-1, 32)) <= step / 2 + 1e-4).all()
        sums = np.frombuffer(got[0][1], np.float32)[1 : 2 * K // 32 : 2]
        np.testing.assert_allclose(sums, deq.sum(1), rtol=1e-5, atol=1e-5 * np.abs(deq).sum())


def _bytes(device, buf, n: int) -> bytes:
    return asyncio.run(device.read_buffer(buf, 0, n))
