"""Issue 19: hostile model files, impatient callers and abusive clients end in typed errors, without
hangs, and leave the runtime usable. Model metadata: a tiny 2-layer GGUF written with gguf-py, each
hyper-parameter replaced by an impossible value; the file must be refused by `open_checkpoint` (no
GPU needed) before anything is allocated from it."""
from __future__ import annotations

import asyncio
import os
import time
import tracemalloc

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")

from webllm_py.checkpoint import open_checkpoint
from webllm_py.errors import ModelFormatError, WebLLMError

from .test_model_families import add_tokenizer

DIM, HEADS, KV, FF, LAYERS = 64, 4, 2, 96, 2
_TOKENS: dict = {}


def tiny_gguf(path, *, shapes: dict | None = None, **meta) -> str:
    """A 2-layer llama GGUF of random f32 weights with SmolLM2's vocabulary; `meta` overrides metadata
    values (llama.<key>: value, uint32 unless a float), `shapes` overrides tensor shapes (zero-filled)."""
    from webllm_py.default_model import default_model_path
    from webllm_py.formats.gguf import GGUFFile

    if not _TOKENS:
        _TOKENS["n"] = len(GGUFFile(str(default_model_path())).metadata["tokenizer.ggml.tokens"])
    vocab = _TOKENS["n"]
    keys = {"block_count": LAYERS, "context_length": 256, "embedding_length": DIM, "feed_forward_length": FF,
            "attention.head_count": HEADS, "attention.head_count_kv": KV, "rope.dimension_count": DIM // HEADS,
            "attention.layer_norm_rms_epsilon": 1e-5, **meta}
    w = gguf.GGUFWriter(str(path), "llama")
    for k, v in keys.items():
        (w.add_float32 if isinstance(v, float) else w.add_uint64 if v >= 2**32 else w.add_uint32)(f"llama.{k}", v)
    add_tokenizer(w)
    rng = np.random.default_rng(0)
    hd = DIM // HEADS
    sh = {"token_embd.weight": (vocab, DIM), "output_norm.weight": (DIM,)}
    for i in range(LAYERS):
        sh.update({f"blk.{i}.attn_norm.weight": (DIM,), f"blk.{i}.ffn_norm.weight": (DIM,),
                   f"blk.{i}.attn_q.weight": (HEADS * hd, DIM), f"blk.{i}.attn_k.weight": (KV * hd, DIM),
                   f"blk.{i}.attn_v.weight": (KV * hd, DIM), f"blk.{i}.attn_output.weight": (DIM, HEADS * hd),
                   f"blk.{i}.ffn_gate.weight": (FF, DIM), f"blk.{i}.ffn_up.weight": (FF, DIM),
                   f"blk.{i}.ffn_down.weight": (DIM, FF)})
    for name, shape in sh.items():
        if shapes and name in shapes:
            w.add_tensor(name, np.zeros(0, np.float32), raw_shape=shapes[name], raw_dtype=gguf.GGMLQuantizationType.F32)
        else:
            w.add_tensor(name, (rng.standard_normal(shape) * 0.05).astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return str(path)


# -- 1 and 5: impossible metadata ---------------------------------------------------------------------------
def test_tiny_gguf_control_opens(tmp_path):
    ck = open_checkpoint(tiny_gguf(tmp_path / "ok.gguf"))
    assert (ck.config.n_layers, ck.config.dim, ck.config.n_heads, ck.config.n_kv_heads) == (LAYERS, DIM, HEADS, KV)


def test_four_billion_layers_refused_fast_and_small(tmp_path):
    path = tiny_gguf(tmp_path / "huge.gguf", block_count=4_000_000_000)
    t = time.perf_counter()
    with pytest.raises(ModelFormatError, match="block count 4000000000"):
        open_checkpoint(path)
    seconds = time.perf_counter() - t
    tracemalloc.start()  # separately: it slows the parse of the 49k-token vocabulary down ~3x
    with pytest.raises(ModelFormatError):
        open_checkpoint(path)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert seconds < 1.0 and peak < 100 * 2**20, (seconds, peak)


BAD_META = [
    {"block_count": 100_000}, {"block_count": 0}, {"block_count": 1},
    {"attention.head_count": 0}, {"attention.head_count_kv": 0}, {"attention.head_count_kv": 3},
    {"rope.dimension_count": 0}, {"rope.dimension_count": 7}, {"rope.dimension_count": 1000},
    {"feed_forward_length": 4_000_000_000}, {"embedding_length": 4_000_000_000}, {"embedding_length": 0},
    {"attention.head_count": 2**40}, {"context_length": 0},
]


@pytest.mark.parametrize("meta", BAD_META, ids=lambda m: "-".join(f"{k}={v}" for k, v in m.items()))
def test_impossible_metadata_is_a_model_format_error(tmp_path, meta):
    with pytest.raises(ModelFormatError):
        open_checkpoint(tiny_gguf(tmp_path / "bad.gguf", **meta))


@pytest.mark.parametrize("shape", [(0,), (2**62, 0), (0, 2**62)], ids=str)
def test_degenerate_tensor_shapes_are_a_model_format_error(tmp_path, shape):
    with pytest.raises(ModelFormatError):
        open_checkpoint(tiny_gguf(tmp_path / "bad.gguf", shapes={"blk.0.attn_norm.weight": shape}))


def test_vocab_larger_than_embedding_is_refused(tmp_path):
    with pytest.raises(ModelFormatError, match="4000000000"):
        open_checkpoint(tiny_gguf(tmp_path / "bad.gguf", vocab_size=4_000_000_000))
    tiny_gguf(tmp_path / "ok.gguf")
    with pytest.raises(ModelFormatError, match=f"vocabulary {_TOKENS['n'] + 1}"):
        open_checkpoint(tiny_gguf(tmp_path / "bad.gguf", vocab_size=_TOKENS["n"] + 1))
