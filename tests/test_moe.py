"""Mixture-of-experts kernels on the GPU (lavapipe) vs numpy: the router (softmax, top-k, renormalise)
and the expert matvecs over stacked [n_experts, N, K] weights in every supported ggml type (gguf-py's
dequantize is the reference), both work splits (one thread per row; a workgroup per row splitting K),
gate/up ("expand": one input row through each chosen expert) and down ("combine": weighted sum into
the residual), with several tokens each routed on its own."""

import asyncio
import struct
from types import SimpleNamespace

import numpy as np
import pytest

from webllm_py.formats.quants import GGMLType
from webllm_py.models.mixtral import WG, ExpertMatvec
from webllm_py.ops import BoundOp
from webllm_py.weights import GPUTensor

from .linear_helpers import TYPES, make_weight

pytestmark = [pytest.mark.gpu]


def f32(device, a) -> object:
    return device.buffer_from(np.ascontiguousarray(a, np.float32).tobytes())


def read(device, buf, n: int, dtype=np.float32) -> np.ndarray:
    return np.frombuffer(asyncio.run(device.read_buffer(buf, 0, n * 4)), dtype)


@pytest.mark.parametrize("E,k", [(4, 2), (8, 2), (8, 3)])
def test_router_top_k(device, E, k):
    T = 7
    rng = np.random.default_rng(E * 10 + k)
    logits = rng.standard_normal((T, E)).astype(np.float32) * 2
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    want_idx = np.argsort(-p, axis=1, kind="stable")[:, :k]
    want_w = np.take_along_axis(p, want_idx, 1)
    want_w /= want_w.sum(1, keepdims=True)

    idx, w = device.create_buffer(4 * T * k), device.create_buffer(4 * T * k)
    step = device.buffer_from(struct.pack("<2I", 0, T))
    kernel = device.kernel("moe_route", n_experts=E, top_k=k, wg=WG)
    op = BoundOp(device.bind(kernel, [f32(device, logits), idx, w, step]), 1, WG)
    with device.recorder() as rec:
        op.record(rec, T)
    assert (read(device, idx, T * k, np.uint32).reshape(T, k) == want_idx).all()
    np.testing.assert_allclose(read(device, w, T * k).reshape(T, k), want_w, rtol=1e-5)


@pytest.mark.parametrize("split_k", [False, True], ids=["row-per-thread", "split-k"])
@pytest.mark.parametrize("qtype", TYPES)
def test_expert_matvec(device, qtype, split_k):
    E, N, K, T, top_k = 4, 37, 256, 3, 2
    rng = np.random.default_rng(abs(hash((qtype, split_k))) % 2**32)
    raw, w = make_weight(qtype, E * N, K, rng)
    w = w.reshape(E, N, K)
    weight = GPUTensor(device.buffer_from(raw + b"\0" * 4), GGMLType[qtype], (E, N, K), "experts")
    route = np.stack([rng.permutation(E)[:top_k] for _ in range(T)]).astype(np.uint32)
    route_w = rng.uniform(0.1, 1.0, (T, top_k)).astype(np.float32)
    moe = SimpleNamespace(idx=device.buffer_from(route.tobytes()), weight=f32(device, route_w))

    # expand: y[t, j] = W[route[t, j]] x[t]
    x = rng.standard_normal((T, K)).astype(np.float32)
    y = device.create_buffer(4 * T * top_k * N)
    up = ExpertMatvec(device, weight, top_k, combine=False, split_k=split_k).bind(f32(device, x), y, moe)
    # combine: out[t] = r0[t] + sum_j route_w[t, j] W[route[t, j]] a[t, j]
    a = rng.standard_normal((T, top_k, K)).astype(np.float32)
    r0 = rng.standard_normal((T, N)).astype(np.float32)
    out = f32(device, r0)
    down = ExpertMatvec(device, weight, top_k, combine=True, split_k=split_k).bind(f32(device, a), out, moe)
    with device.recorder() as rec:
        up.record(rec, T)
        down.record(rec, T)

    we = w[route]  # [T, top_k, N, K]
    want_up = np.einsum("tjnk,tk->tjn", we, x.astype(np.float64))
    scale_up = np.einsum("tjnk,tk->tjn", np.abs(we), np.abs(x.astype(np.float64))) + 1e-30
    got_up = read(device, y, T * top_k * N).reshape(T, top_k, N)
    assert (np.abs(got_up - want_up) / scale_up).max() < 2e-6

    want_down = r0 + np.einsum("tj,tjnk,tjk->tn", route_w, we, a.astype(np.float64))
    scale_down = np.abs(r0) + np.einsum("tj,tjnk,tjk->tn", route_w, np.abs(we), np.abs(a.astype(np.float64))) + 1e-30
    got_down = read(device, out, T * N).reshape(T, N)
    assert (np.abs(got_down - want_down) / scale_down).max() < 2e-6
