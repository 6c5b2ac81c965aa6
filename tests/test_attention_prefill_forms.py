"""The forms of attention_prefill.wgsl.j2 on lavapipe vs the numpy reference of test_attention.py:
the barrier-free one CPU adapters get (`cpu_adapter`, which the Device sets) and the workgroup-tiled
ones GPUs get (a thread per query row, or with subgroups L lanes per row), forced here through the
Device's `cpu_adapter` parameter and KernelPolicy.prefill_attention so that lavapipe checks them all."""

import asyncio

import numpy as np
import pytest

from webllm_py.planner import KernelPolicy, PrefillTiling

from .attention_helpers import H, KV, Harness, chunking, make_qkv, reference, shuffled_cache

pytestmark = pytest.mark.gpu


def forced(monkeypatch, device, cpu_adapter: bool):
    kernel = device.kernel

    def with_form(template, label="", **params):
        if template == "attention_prefill":
            params["cpu_adapter"] = cpu_adapter
        return kernel(template, label, **params)

    monkeypatch.setattr(device, "kernel", with_form)


@pytest.mark.parametrize("cpu_adapter", [True, False])
@pytest.mark.parametrize(
    "dtype,window,softcap",
    [("f32", None, None), ("f16", None, None), ("f16x2", None, None), ("f32", 9, None), ("f32", None, 5.0)],
)
def test_prefill_forms_match_numpy(device, monkeypatch, cpu_adapter, dtype, window, softcap):
    if dtype == "f16" and not device.has_f16:
        pytest.skip("the adapter has no shader-f16")
    N = 45
    q, k, v = make_qkv(N, 7)
    if softcap:
        q *= 4  # large scores so the cap matters
    forced(monkeypatch, device, cpu_adapter)
    h = Harness(
        device,
        shuffled_cache(device, dtype=dtype),
        max_tokens=32,
        sliding_window=window,
        softcap=softcap,
    )
    assert ("k_tile" not in h.attn.prefill.source) == cpu_adapter  # the form asked for was built
    _check_against_numpy(h, q, k, v, dtype, window, softcap)


def _check_against_numpy(h, q, k, v, dtype, window, softcap):
    """The prompt in a 32-token chunk and then chunks of up to 7, against the numpy reference."""
    f16 = dtype != "f32"  # f16 values in the cache (f16x2: packed two to a u32, no shader-f16 needed)
    if f16:  # the cache holds f16: the reference sees K/V rounded the same way
        k, v = k.astype(np.float16).astype(np.float32), v.astype(np.float16).astype(np.float32)
    ref = reference(q, k, v, H, KV, window=window, softcap=softcap)
    tol = 10 if f16 else 1
    got = h.run(0, q, k, v, [32] + chunking(len(q) - 32, 7))
    np.testing.assert_allclose(got, ref, atol=2e-5 * tol, rtol=1e-4 * tol)


@pytest.mark.parametrize(
    "unroll,dtype,window,softcap",
    [(4, "f32", None, None), (4, "f16x2", 9, None), (1, "f32", None, 5.0), (8, "f16x2", None, None)],
)
def test_prefill_cpu_loop_form_matches_numpy(device, monkeypatch, unroll, dtype, window, softcap):
    """The CPU form with q and acc in arrays walked `unroll` vec4s a pass (SwiftShader's,
    planner.SWIFTSHADER_PREFILL_UNROLL), on lavapipe."""
    q, k, v = make_qkv(45, 5)
    if softcap:
        q *= 4
    forced(monkeypatch, device, True)
    h = Harness(
        device,
        shuffled_cache(device, dtype=dtype),
        max_tokens=32,
        sliding_window=window,
        softcap=softcap,
        policy=KernelPolicy(prefill_attention=PrefillTiling(16, 32, unroll=unroll)),
    )
    assert "var acc: array<vec4<f32>" in h.attn.prefill.source  # the loop form was built
    _check_against_numpy(h, q, k, v, dtype, window, softcap)


@pytest.fixture(scope="module")
def sg_device():
    """A lavapipe device with the subgroups feature (the session's asks for it on GPUs only)."""
    from webllm_py.gpu import request_device

    dev = asyncio.run(request_device("native", use_subgroups=True))
    if not dev.has_subgroups:
        pytest.skip("the adapter grants no subgroups")
    return dev


# (heads, kv heads, head_dim), PrefillTiling(tq, tk, lanes[, rows]), cache element, window, softcap: L = 4 and 8,
# GQA groups 1/3/4/8, head_dim 64 and 128, tiles of 8-32 positions (the 45 positions span several),
# workgroups with rows past n_tokens (chunks of 7: ragged against tq).
LANE_CASES = [
    ((H, KV, 64), PrefillTiling(4, 8, 4), "f32", None, None),
    ((H, KV, 64), PrefillTiling(4, 8, 4), "f16", None, None),
    ((H, KV, 64), PrefillTiling(4, 8, 4), "f16x2", None, None),
    ((H, KV, 64), PrefillTiling(2, 16, 4), "f32", 9, None),
    ((H, KV, 64), PrefillTiling(4, 8, 4), "f32", None, 5.0),
    ((4, 4, 128), PrefillTiling(4, 16, 8), "f16x2", 9, None),
    ((8, 2, 128), PrefillTiling(4, 32, 8), "f16", None, 5.0),
    ((8, 1, 64), PrefillTiling(2, 16, 4), "f32", 9, 5.0),
    ((4, 1, 128), PrefillTiling(4, 8, 4), "f32", None, None),
    # R rows per thread: 2 of SmolLM2's 12 rows, 3, and 4 of 16 with window and softcap
    ((H, KV, 64), PrefillTiling(4, 8, 4, 2), "f16x2", None, None),
    ((H, KV, 64), PrefillTiling(4, 16, 4, 3), "f32", 9, None),
    ((8, 1, 128), PrefillTiling(2, 16, 8, 4), "f32", 9, 5.0),
]


@pytest.mark.parametrize("layout,tiling,dtype,window,softcap", LANE_CASES)
def test_prefill_lanes_match_numpy(sg_device, monkeypatch, layout, tiling, dtype, window, softcap):
    device = sg_device
    if dtype == "f16" and not device.has_f16:
        pytest.skip("the adapter has no shader-f16")
    N = 45
    q, k, v = make_qkv(N, 11, layout)
    if softcap:
        q *= 4  # large scores so the cap matters
    forced(monkeypatch, device, False)
    h = Harness(
        device,
        shuffled_cache(device, dtype=dtype, layout=layout),
        max_tokens=32,
        layout=layout,
        sliding_window=window,
        softcap=softcap,
        policy=KernelPolicy(prefill_attention=tiling),
    )
    assert "subgroupShuffleXor" in h.attn.prefill.source  # the lanes form was built
    if dtype != "f32":
        k, v = k.astype(np.float16).astype(np.float32), v.astype(np.float16).astype(np.float32)
    ref = reference(q, k, v, layout[0], layout[1], window=window, softcap=softcap)
    tol = 1 if dtype == "f32" else 10
    got = h.run(0, q, k, v, [32] + chunking(N - 32, 7))
    np.testing.assert_allclose(got, ref, atol=2e-5 * tol, rtol=1e-4 * tol)


@pytest.mark.parametrize("layout,dtype", [((4, 2, 6), "f32"), ((4, 2, 6), "f16")])
def test_prefill_gpu_form_odd_head_dim(device, monkeypatch, layout, dtype):
    """The thread-per-row GPU form where head_dim % 4 != 0 (no vec4 loads): scalar cache elements."""
    if dtype == "f16" and not device.has_f16:
        pytest.skip("the adapter has no shader-f16")
    q, k, v = make_qkv(45, 3, layout)
    forced(monkeypatch, device, False)
    h = Harness(device, shuffled_cache(device, dtype=dtype, layout=layout), max_tokens=32, layout=layout)
    assert "k_tile" in h.attn.prefill.source and "Cache4>" not in h.attn.prefill.source
    if dtype != "f32":
        k, v = k.astype(np.float16).astype(np.float32), v.astype(np.float16).astype(np.float32)
    got = h.run(0, q, k, v, [32, 13])
    np.testing.assert_allclose(got, reference(q, k, v, *layout[:2]), atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("window", [None, 512])
def test_prefill_gpu_form_long_head_dim_256(device, monkeypatch, window):
    """The thread-per-row GPU form (GPUs without subgroups, and lavapipe in the GPU-path tests) at Gemma 3's head
    layout (4 heads on 1 kv head of 256 dims; its local layers' window 512) past 122 positions, rows checked to the
    last. llvmpipe ends every loop of a shader early once its loops took 65535 back-edges in all (Mesa's
    LP_MAX_TGSI_LOOP_ITERATIONS); the form's former loops over head_dim spent that from ~120 positions at head_dim
    256: the rows from 112 on (the workgroups reaching past ~120 keys) came out wrong, off by up to 3.5 here, and
    Gemma-3-270M's logits by 0.8-1.9 of max |logit| from 122 prompt tokens on gpu_like_device. The form's dims are
    unrolled since (attention_prefill.wgsl.j2)."""
    layout = (4, 1, 256)
    N = 160
    q, k, v = make_qkv(N, 13, layout)
    forced(monkeypatch, device, False)
    h = Harness(
        device,
        shuffled_cache(device, num_blocks=16, block_size=16, layout=layout),
        max_tokens=128,
        layout=layout,
        sliding_window=window,
    )
    assert "k_tile" in h.attn.prefill.source and "subgroupShuffleXor" not in h.attn.prefill.source
    got = h.run(0, q, k, v, [128, 32])  # the second chunk's rows attend to 129-160 positions
    np.testing.assert_allclose(got, reference(q, k, v, *layout[:2], window=window), atol=2e-5, rtol=1e-4)
