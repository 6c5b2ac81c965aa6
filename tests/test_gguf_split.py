"""Split GGUFs (llama-gguf-split's `name-0000k-of-0000N.gguf`) open as one model: the shards are written
by gguf-py's own writer (tests/gguf_split.py), and the merged checkpoint must equal the original file's,
tensor bytes included. Mismatched or missing shards are ModelFormatErrors."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.gguf_split import split_gguf
from webllm_py.checkpoint import open_checkpoint
from webllm_py.default_model import default_model_path
from webllm_py.errors import ModelFormatError


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return split_gguf(default_model_path(), tmp_path_factory.mktemp("split"), 3)


def tensor_bytes(ckpt):
    return {n: t.source.read(t.offset, t.nbytes) for n, t in ckpt.tensors.items()}


def test_split_opens_as_the_original(shards):
    orig = open_checkpoint(default_model_path())
    split = open_checkpoint(str(shards[1]))  # any shard's name opens the whole set
    assert split.config == orig.config
    assert split.tokenizer.encode("The capital of France is") == orig.tokenizer.encode("The capital of France is")
    assert len({id(t.source) for t in split.tensors.values()}) == 3
    assert tensor_bytes(split) == tensor_bytes(orig)


def test_split_from_bytes_in_order(shards):
    parts = [p.read_bytes() for p in shards]
    assert set(open_checkpoint(parts).tensors) == set(open_checkpoint(str(shards[0])).tensors)
    with pytest.raises(ModelFormatError, match="out of order"):
        open_checkpoint([parts[1], parts[0], parts[2]])
    with pytest.raises(ModelFormatError, match="split into 3 files but 2 were given"):
        open_checkpoint(parts[:2])
    with pytest.raises(ModelFormatError, match="split into 3 files but 1 was given"):
        open_checkpoint(parts[0])  # the first shard alone, as bytes


def test_missing_shard_file(shards, tmp_path):
    for p in shards[:2]:
        (tmp_path / p.name).symlink_to(p)
    with pytest.raises(FileNotFoundError, match="00003-of-00003"):
        open_checkpoint(str(tmp_path / shards[0].name))
    assert Path(shards[2]).exists()
