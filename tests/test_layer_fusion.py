"""The fusion pass over a layer's ops (models/layer.py), on lavapipe with the aligned 4-bit matvec:
linears that read one x become one MatvecGroup, the GLU after gate and up joins it, and the RMSNorm
before them folds in only where no later op reads the norm's output (Mixtral's experts read the h its
router reads). Values against numpy over gguf-py's dequantize."""

import struct

import numpy as np
import pytest

pytest.importorskip("gguf")

from webllm_py.linear import Linear, MatvecGroup, MatvecTiling  # noqa: E402
from webllm_py.models.layer import Layer, fuse  # noqa: E402
from webllm_py.ops import GLU, Activation, RMSNorm  # noqa: E402
from webllm_py.planner import KernelPolicy  # noqa: E402

from .linear_helpers import f32_buffer, make_weight, read_f32, upload  # noqa: E402

K, N, EPS = 512, 24, 1e-5


def ops(device, rng, reader: bool):
    """rmsnorm(x) -> h; h Wgate, h Wup; silu(gate) * up; and, with `reader`, gelu(h) read after them."""
    x = (rng.standard_normal((1, K)) * 3).astype(np.float32)
    nw = rng.standard_normal(K).astype(np.float32)
    h = x.astype(np.float64) / np.sqrt((x.astype(np.float64) ** 2).mean() + EPS) * nw
    step = device.buffer_from(struct.pack("<II", 0, 1))
    hb = f32_buffer(device, np.full((1, K), np.nan, np.float32))
    named = [("ffn_norm", RMSNorm(device, f32_buffer(device, nw), K, EPS, wg=64).bind(f32_buffer(device, x), hb, step))]
    ws, ys = [], []
    for name in ("w_gate", "w_up"):
        raw, w = make_weight("Q4_0", N, K, rng)
        ys.append(f32_buffer(device, np.zeros(N, np.float32)))
        lin = Linear(
            device,
            upload(device, raw, "Q4_0", N, K),
            matvec=MatvecTiling(64, 4, True),
            policy=KernelPolicy(fold_norm_max_k=K),
        )
        named.append((name, lin.bind(hb, ys[-1])))
        ws.append(w)
    act = f32_buffer(device, np.zeros(N, np.float32))
    named.append(("glu", GLU(device, N, "silu").bind(ys[0], ys[1], act, step)))
    g, u = h[0] @ ws[0].T, h[0] @ ws[1].T
    want = {act: g * 0.5 * (1 + np.tanh(g / 2)) * u}  # silu(g) * u
    if reader:
        out = f32_buffer(device, np.zeros(K, np.float32))
        named.append(("gelu", Activation(device, K, "gelu_tanh").bind(hb, out, step)))
        want[out] = 0.5 * h[0] * (1 + np.tanh(np.sqrt(2 / np.pi) * (h[0] + 0.044715 * h[0] ** 3)))
    return named, want


@pytest.mark.parametrize("reader", [False, True], ids=["norm-folds", "norm-read-later"])
def test_fusion_pass(device, reader):
    named, want = ops(device, np.random.default_rng(3), reader)
    norm = named[0][1]
    fused = fuse(named)
    assert [n for n, _ in fused] == ["ffn_norm", "gate_up"] + (["gelu"] if reader else [])
    group = fused[1][1]
    assert isinstance(group, MatvecGroup) and group.fused is not None and group.glu is not None
    assert norm.absorbed == (not reader)
    layer = Layer(named)
    with device.recorder() as rec:
        layer.record(rec, 1)
    for buf, ref in want.items():
        got = read_f32(device, buf, ref.size)
        assert np.abs(got - ref).max() <= 1e-4 * np.abs(ref).max() + 1e-6
