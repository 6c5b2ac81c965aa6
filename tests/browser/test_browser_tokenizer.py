"""The pure-Python tokenizer in Pyodide: SmolLM2's vocabulary read from the GGUF in the browser
encodes exactly as HF `tokenizers` does on CPython, decodes back to the text, and the streaming
decoder's chunks (fed one token at a time) add up to the same text."""

import json
from pathlib import Path

import pytest
from tokenizers import Tokenizer as HFTokenizer

from .conftest import run_python

pytestmark = pytest.mark.browser

TEXTS = [
    "Hello, world! The capital of France is Paris.",
    "日本語のテキストと中文混合, 한국어도.",
    "Emoji 👩‍👩‍👧 and flags 🇫🇷, combining é vs é.",
    "def f(x):\n    return x ** 2  # code\t\ttabs",
    "مرحبا بالعالم — RTL text, digits 1234567890",
]


def test_tokenizer_round_trips_in_pyodide(webllm_page):
    code = f"""
from pyodide.http import pyfetch
from webllm_py.formats.gguf import GGUFFile
from webllm_py.tokenizer import StreamDecoder, Tokenizer
r = await pyfetch("/models/SmolLM2-135M-Instruct.Q4_1.gguf")
tok = Tokenizer.from_gguf_metadata(GGUFFile(await r.bytes()).metadata)
out = []
for text in {json.dumps(TEXTS, ensure_ascii=False)}:
    ids = tok.encode(text, add_special=False)
    dec = StreamDecoder(tok)
    chunks = [dec.feed(i) for i in ids] + [dec.flush()]
    out.append({{"ids": ids, "decoded": tok.decode(ids), "stream": chunks}})
out
"""
    results = run_python(webllm_page, code, timeout_ms=180_000)
    hf = HFTokenizer.from_file(str(Path(__file__).parents[2] / "build/tokenizers/smollm2/tokenizer.json"))
    for text, r in zip(TEXTS, results):
        assert r["ids"] == hf.encode(text, add_special_tokens=False).ids, text
        assert r["decoded"] == text
        assert "".join(r["stream"]) == text
        assert sum(1 for c in r["stream"] if c) > 1  # it really streamed
