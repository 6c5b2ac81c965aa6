"""llama.cpp's tokenizer test vectors (ggml-vocab-*.gguf + .inp/.out from the llama-cpp-python 0.3.36 sdist):
our encode of every input must equal llama.cpp's ids exactly (add_special=False, parse_special=False, as
llama.cpp's test-tokenizer-0 calls it). Data: `bash scripts/fetch_tokenizer_vectors.sh`."""

import pytest

from .tokenizer_helpers import VOCAB_DIR, gguf_metadata, read_vocab_tests, require
from webllm_py.errors import TokenizerError
from webllm_py.tokenizer import Tokenizer

# Every vocab in the sdist with test vectors whose tokenizer is byte-level BPE or SentencePiece BPE.
SUPPORTED = [
    "llama-bpe",
    "llama-spm",
    "gpt-2",
    "qwen2",
    "qwen35",
    "phi-3",
    "starcoder",
    "refact",
    "command-r",
    "mpt",
    "falcon",
    "deepseek-coder",
    "deepseek-llm",
    "gemma-4",
]
# Vocab types the runtime does not implement (WordPiece); they must be refused with a clear error.
UNSUPPORTED = ["bert-bge"]

_tokenizers = {}


def _tokenizer(name):
    if name not in _tokenizers:
        meta = gguf_metadata(require(VOCAB_DIR / f"ggml-vocab-{name}.gguf"))
        _tokenizers[name] = Tokenizer.from_gguf_metadata(meta)
    return _tokenizers[name]


@pytest.mark.parametrize("name", SUPPORTED)
def test_llama_cpp_vectors(name):
    tok = _tokenizer(name)
    cases = read_vocab_tests(name)
    assert cases
    bad = []
    for text, expected in cases:
        got = tok.encode(text, add_special=False, parse_special=False)
        if got != expected:
            bad.append((text, got, expected))
    assert not bad, f"{name}: {len(bad)}/{len(cases)} differ; first: {bad[0]!r}"


@pytest.mark.parametrize("name", SUPPORTED)
def test_vectors_decode_back(name):
    """Decoding llama.cpp's ids gives back the input text (up to SentencePiece's added leading space)."""
    tok = _tokenizer(name)
    for text, expected in read_vocab_tests(name):
        assert tok.decode(expected) == text, (name, text)


@pytest.mark.parametrize("name", UNSUPPORTED)
def test_unsupported_vocab_is_refused(name):
    with pytest.raises(TokenizerError, match="not supported"):
        Tokenizer.from_gguf_metadata(gguf_metadata(require(VOCAB_DIR / f"ggml-vocab-{name}.gguf")))
