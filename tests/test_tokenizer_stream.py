"""StreamDecoder properties (hypothesis): chunks joined == Tokenizer.decode, text comes out as soon as it is
complete UTF-8, never a broken character, never a lost byte; on byte-level BPE (SmolLM2), SentencePiece with
byte fallback from GGUF (llama-spm) and from tokenizer.json (Mistral)."""

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .tokenizer_helpers import HF_DIR, VOCAB_DIR, gguf_metadata, require, smollm2_gguf
from webllm_py.tokenizer import StreamDecoder, Tokenizer
from webllm_py.tokenizer.bpe import BYTE_TO_CHAR

_tok = {}


def tokenizer(name):
    if name not in _tok:
        if name == "smollm2":
            _tok[name] = Tokenizer.from_gguf_metadata(gguf_metadata(smollm2_gguf()))
        elif name == "llama-spm":
            _tok[name] = Tokenizer.from_gguf_metadata(gguf_metadata(require(VOCAB_DIR / "ggml-vocab-llama-spm.gguf")))
        else:
            _tok[name] = Tokenizer.from_hf(require(HF_DIR / "mistral" / "tokenizer.json"))
    return _tok[name]


NAMES = ["smollm2", "llama-spm", "mistral"]
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def smollm2_text(**kw):
    """Text whose every UTF-8 byte has a token in SmolLM2's vocabulary (it lacks 21 of the 256 bytes, e.g. 0x1D
    and the lead bytes of planes 4-16; those are dropped on encode, as llama.cpp and HF drop them)."""
    tok = tokenizer("smollm2")
    ok = lambda ch: all(tok.piece_to_id(BYTE_TO_CHAR[b]) is not None for b in ch.encode("utf-8"))
    return st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\x00\ufffd").filter(ok), **kw)


def byte_ids(tok):
    return [tok.piece_to_id(f"<0x{b:02X}>") for b in range(256)]


def stream(tok, ids, skip_special=False):
    dec = StreamDecoder(tok, skip_special=skip_special)
    chunks = [dec.feed(i) for i in ids]
    chunks.append(dec.flush())
    return chunks


def incomplete_tail_ok(tail: bytes) -> bool:
    """`tail` is the start of one UTF-8 character still missing bytes (held back, not lost)."""
    if not tail:
        return True
    if len(tail) > 3:
        return False
    lead = tail[0]
    need = 2 if 0xC2 <= lead <= 0xDF else 3 if 0xE0 <= lead <= 0xEF else 4 if 0xF0 <= lead <= 0xF4 else 0
    return need > len(tail) and all(0x80 <= b <= 0xBF for b in tail[1:])


@pytest.mark.parametrize("name", NAMES)
@SETTINGS
@given(data=st.data())
def test_random_ids_join_to_full_decode(name, data):
    tok = tokenizer(name)
    ids = data.draw(
        st.lists(
            st.one_of(
                st.integers(0, tok.vocab_size - 1), st.sampled_from([i for i in byte_ids(tok) if i is not None] or [0])
            ),
            max_size=40,
        )
    )
    skip = data.draw(st.booleans())
    assert "".join(stream(tok, ids, skip)) == tok.decode(ids, skip_special=skip)


@pytest.mark.parametrize("name", NAMES)
@SETTINGS
@given(data=st.data())
def test_text_round_trip_never_breaks_characters(name, data):
    tok = tokenizer(name)
    text = data.draw(
        smollm2_text(max_size=60)
        if name == "smollm2"
        else st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\ufffd"), max_size=60)
    )
    ids = tok.encode(text, add_special=False, parse_special=False)
    dec = StreamDecoder(tok)
    emitted = ""
    for i in ids:
        chunk = dec.feed(i)
        assert "\ufffd" not in chunk  # never a broken character
        emitted += chunk
    emitted += dec.flush()
    assert emitted == tok.decode(ids)
    if name == "smollm2":  # byte-level BPE decodes back to the exact text
        assert emitted == text


@pytest.mark.parametrize("name", ["llama-spm", "mistral"])
@SETTINGS
@given(text=st.text(min_size=1, max_size=30))
def test_byte_fallback_split_characters(name, text):
    """A text spelled entirely in <0xXX> byte pieces: every multi-byte character is split across tokens;
    each character must come out at the token that completes it, not before and not later."""
    tok = tokenizer(name)
    table = byte_ids(tok)
    # Start with an ordinary piece ("▁a" -> "a"): SentencePiece drops the first piece's leading space.
    lead = tok.encode("a", add_special=False)
    raw = b"a" + text.encode("utf-8")
    ids = lead + [table[b] for b in text.encode("utf-8")]
    dec = StreamDecoder(tok)
    emitted = ""
    for n, i in enumerate(ids, 1):
        emitted += dec.feed(i)
        done = emitted.encode("utf-8")
        assert raw[: len(done)] == done
        assert incomplete_tail_ok(raw[len(done) : n])
    emitted += dec.flush()
    assert emitted == "a" + text == tok.decode(ids)


@SETTINGS
@given(text=smollm2_text(min_size=1, max_size=40))
def test_byte_level_multibyte_across_tokens(text):
    """Byte-level BPE splits CJK/emoji bytes across tokens: output after each token is exactly the complete
    characters received so far."""
    tok = tokenizer("smollm2")
    ids = tok.encode(text, add_special=False, parse_special=False)
    dec = StreamDecoder(tok)
    emitted = ""
    raw = b""
    for i in ids:
        raw += tok.token_bytes(i)
        emitted += dec.feed(i)
        done = emitted.encode("utf-8")
        assert raw[: len(done)] == done
        assert incomplete_tail_ok(raw[len(done) :])
    assert emitted + dec.flush() == text


def test_spm_leading_space_is_handled_once():
    tok = tokenizer("llama-spm")
    ids = tok.encode("Hello world", add_special=False)
    assert tok.decode(ids) == "Hello world"
    assert "".join(stream(tok, ids)) == "Hello world"
    with_bos = tok.encode("Hello world")
    assert "".join(stream(tok, with_bos, skip_special=True)) == "Hello world" == tok.decode(with_bos, True)
