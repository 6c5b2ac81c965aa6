"""Both forms of attention_prefill.wgsl.j2 on lavapipe vs the numpy reference of test_attention.py:
the barrier-free one CPU adapters get (`cpu_adapter`, which the Device sets) and the workgroup-tiled
one GPUs get, forced here through the Device's `cpu_adapter` parameter so that lavapipe checks both."""

import numpy as np
import pytest

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
    f16 = dtype != "f32"  # f16 values in the cache (f16x2: packed two to a u32, no shader-f16 needed)
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
    if f16:  # the cache holds f16: the reference sees K/V rounded the same way
        k, v = k.astype(np.float16).astype(np.float32), v.astype(np.float16).astype(np.float32)
    ref = reference(q, k, v, H, KV, window=window, softcap=softcap)
    tol = 10 if f16 else 1
    got = h.run(0, q, k, v, [32] + chunking(N - 32, 7))
    np.testing.assert_allclose(got, ref, atol=2e-5 * tol, rtol=1e-4 * tol)
