"""Token masks, checked by brute force: for random matcher states, a token's bit is set exactly when
feeding the token's bytes keeps the text a live prefix of the grammar, and EOS's bit exactly when the
state accepts. Small random vocabularies (with half-characters of UTF-8, like byte-level BPE pieces),
then the real vocabularies of SmolLM2 (byte-level BPE, from the GGUF) and Mistral (SentencePiece with
<0xXX> byte pieces), whose token bytes come from HF `tokenizers` as the reference."""

from __future__ import annotations

import json
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from webllm_py.structured.constraint import Constraint
from webllm_py.structured.grammar import Grammar
from webllm_py.structured.json_schema import JSON_OBJECT_GBNF, schema_to_gbnf
from webllm_py.structured.matcher import Matcher
from webllm_py.structured.token_mask import TokenTrie, allowed_mask, mask_ids

from .structured_schemas import instances, object_schemas, spellings
from .tokenizer_helpers import HF_DIR, require, smollm2_gguf

PIECES = [
    "{",
    "}",
    "[",
    "]",
    '"',
    ":",
    ",",
    " ",
    "a",
    "b",
    "x",
    "_",
    "0",
    "1",
    "-",
    ".",
    "e",
    "true",
    "false",
    "null",
    "é",
    "€",
    "\\",
    "n",
    "u",
]
EOS = 0


def vocab_strategy():
    """Token byte strings: joined JSON-ish pieces, and cuts of them at any byte (half characters)."""
    whole = st.lists(st.sampled_from(PIECES), min_size=1, max_size=3).map(lambda p: "".join(p).encode())
    cut = st.tuples(whole, st.integers(0, 3), st.integers(1, 4)).map(lambda t: t[0][t[1] : t[1] + t[2]] or t[0])
    return st.lists(st.one_of(whole, cut), min_size=20, max_size=120)


def brute_force(matcher: Matcher, state, vocab: list[bytes], eos_ids) -> set[int]:
    ok = {i for i, b in enumerate(vocab) if b and i not in eos_ids and matcher.feed(state, b) is not None}
    return ok | (set(eos_ids) if state.accepting else set())


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.data(), object_schemas(small=True), vocab_strategy())
def test_mask_equals_brute_force_small_vocab(data, schema, vocab):
    vocab = [b""] + vocab  # id 0: EOS (no bytes)
    trie = TokenTrie(vocab, [EOS])
    text = spellings(data.draw(instances(schema)))[1].encode()
    cuts = sorted(data.draw(st.lists(st.integers(0, len(text)), min_size=1, max_size=5))) + [len(text)]
    # The schema's grammar (bounded strings) and generic JSON (unbounded strings: the walk's shortcut
    # over bytes on which the state loops).
    for m in (Matcher(Grammar.from_gbnf(schema_to_gbnf(schema))), Matcher(Grammar.from_gbnf(JSON_OBJECT_GBNF))):
        for cut in cuts:
            state = m.feed(m.initial, text[:cut])
            assert state is not None
            got = set(mask_ids(allowed_mask(trie, m, state)))
            assert got == brute_force(m, state, vocab, [EOS]), (schema, text[:cut])
            assert allowed_mask(trie, m, state) is state.mask  # cached on the state


def _hf_token_bytes(path) -> list[bytes]:
    """Each token's bytes as HF tokenizers decodes it (byte-level: the GPT-2 byte alphabet undone;
    SentencePiece: U+2581 -> space, <0xXX> -> that byte)."""
    from tokenizers import Tokenizer as HFTokenizer

    hf = HFTokenizer.from_file(str(path))
    vocab = hf.get_vocab(with_added_tokens=True)
    out = [b""] * hf.get_vocab_size(with_added_tokens=True)
    byte_dec = None
    if "ByteLevel" in json.dumps(json.loads(hf.to_str()).get("decoder")):
        bs = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
        rest = [n for n in range(256) if n not in bs]  # GPT-2's bytes_to_unicode: the others map to 256+k
        cs = bs + [256 + k for k in range(len(rest))]
        bs = bs + rest
        byte_dec = {chr(c): b for b, c in zip(bs, cs)}
    for piece, i in vocab.items():
        if byte_dec is not None:
            out[i] = bytes(byte_dec[c] for c in piece) if all(c in byte_dec for c in piece) else piece.encode()
        elif len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
            out[i] = bytes([int(piece[3:5], 16)])
        else:
            out[i] = piece.replace("\u2581", " ").encode()
    return out


def _check_real_vocab(tok, hf_path, texts, n_states=6):
    ref_bytes = _hf_token_bytes(hf_path)
    specials = {i for i in range(tok.vocab_size) if tok.is_special(i)}
    vocab = [b"" if i in specials else ref_bytes[i] for i in range(tok.vocab_size)]
    rng = random.Random(0)
    for gbnf, text in texts:
        c = Constraint(tok, gbnf)
        data = text.encode()
        for cut in sorted(rng.sample(range(len(data) + 1), min(n_states, len(data) + 1))):
            state = c.matcher.feed(c.matcher.initial, data[:cut])
            got = set(mask_ids(allowed_mask(c.trie, c.matcher, state, c.words)))
            want = brute_force(c.matcher, state, vocab, sorted(tok.eos_ids))
            assert got == want, (text[:cut], sorted(got ^ want)[:10])


def test_mask_smollm2_vocab():
    from webllm_py.checkpoint import open_checkpoint

    tok = open_checkpoint(str(smollm2_gguf())).tokenizer
    schema = {
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 6},
            "n": {"type": "integer"},
            "ok": {"enum": [True, None]},
        },
        "required": ["name"],
    }
    _check_real_vocab(
        tok,
        require(HF_DIR / "smollm2" / "tokenizer.json"),
        [
            (JSON_OBJECT_GBNF, '{"k": [1, -2.5e3, {"é€": null}], "z": "a\\n\\u00e9"}'),
            (schema_to_gbnf(schema), '{"name": "€ab", "n": -12, "ok": true}'),
        ],
    )


def test_mask_mistral_sentencepiece_vocab():
    from webllm_py.tokenizer import Tokenizer

    path = require(HF_DIR / "mistral" / "tokenizer.json")
    tok = Tokenizer.from_hf(str(path))
    _check_real_vocab(tok, path, [(JSON_OBJECT_GBNF, ' {"ключ": ["€😀", true]}')], n_states=5)


def test_sentencepiece_first_piece_leading_space():
    """SentencePiece detokenizers drop the first output piece's leading space ("▁yes" shows as "yes",
    HF tokenizers' decode agrees), so the first mask judges tokens without it; later ones with it."""
    from tokenizers import Tokenizer as HFTokenizer

    from webllm_py.tokenizer import Tokenizer

    path = require(HF_DIR / "mistral" / "tokenizer.json")
    tok, hf = Tokenizer.from_hf(str(path)), HFTokenizer.from_file(str(path))
    ref = _hf_token_bytes(path)
    c = Constraint(tok, 'root ::= ("yes" | "no") " sir"\n')
    first = set(mask_ids(c.mask()))
    m = c.matcher
    specials = {i for i in range(tok.vocab_size) if tok.is_special(i)}
    want = {
        i
        for i, b in enumerate(ref)
        if b and i not in specials and m.feed(m.initial, b[1:] if b[:1] == b" " else b) is not None
    }
    assert first == want
    yes = hf.token_to_id("\u2581yes")
    assert yes in first and hf.decode([yes]) == "yes"
    c.advance(yes)
    later = set(mask_ids(c.mask()))
    assert hf.token_to_id("\u2581sir") in later and hf.token_to_id("sir") not in later
    c.advance(hf.token_to_id("\u2581sir"))
    assert c.complete

    from webllm_py.checkpoint import open_checkpoint

    byte_level = Constraint(open_checkpoint(str(smollm2_gguf())).tokenizer, 'root ::= " yes"\n')
    assert not byte_level._strip_first  # byte-level BPE keeps every space


def test_mask_bounded_string_near_the_bound():
    """States inside a string of at most n characters, at every byte of outputs that fill it (multi-byte
    characters, escapes, cut mid-character): the walk takes the tokens of a subtree that fit what is left
    as the shortest of its ids, which only pays with big subtrees of long tokens — so a vocabulary of
    thousands of letter runs of 1..24 bytes, plus the pieces that break a run."""
    rng = random.Random(1)
    letters = "abcdefgh"
    vocab = [b""] + sorted(
        {"".join(rng.choice(letters) for _ in range(rng.randint(1, 24))).encode() for _ in range(4000)}
    )
    extra = ['"', '",', '"}', "\\", "\\n", "\\u00e9", "é", "€", "😀", "aé", 'é"', 'ab"', " ", " a", "a b"]
    vocab += [p.encode() for p in extra] + [p.encode()[:k] for p in ("€", "😀", "é") for k in (1, 2)]
    vocab += [p.encode()[1:] for p in ("€a", "😀ab", "éabc")]  # continuation bytes, then letters
    trie = TokenTrie(vocab, [EOS])
    for hi in (3, 12, 20, 40):  # (past 16: chains followed in steps)
        schema = {"type": "object", "properties": {"s": {"type": "string", "maxLength": hi}}, "required": ["s"]}
        m = Matcher(Grammar.from_gbnf(schema_to_gbnf(schema)))
        fill = "abcdefgh" * 5
        for value in ("a" * hi, fill[: hi - 1] + "é", ("é€😀" + fill)[:hi], ("ab\\n€" + fill)[:hi]):
            text = json.dumps({"s": value}, ensure_ascii=False).encode()
            assert m.accepts(text)
            start = text.index(b'"', 5)
            for cut in range(start, len(text) + 1):
                state = m.feed(m.initial, text[:cut])
                got = set(mask_ids(allowed_mask(trie, m, state)))
                assert got == brute_force(m, state, vocab, [EOS]), (hi, text[:cut])
    assert trie._by_length  # the shortcut by length was taken (else this test checks nothing new)


def test_mask_strings_of_non_ascii_characters():
    """Inside JSON strings (unbounded and of at most n characters) a vocabulary of thousands of runs of
    Cyrillic, CJK, accented and emoji characters, plus their pieces cut at every byte: the walk takes
    whole subtrees of such tokens as runs of characters, so their masks must still equal brute force,
    and the matcher must count characters, not bytes, as Python's UTF-8 decoder and jsonschema do."""
    import jsonschema

    rng = random.Random(2)
    alphabet = "abcдефжзий中文字日本語éüñ😀🚀"
    words = {"".join(rng.choice(alphabet) for _ in range(rng.randint(1, 8))) for _ in range(3000)}
    vocab = [b""] + sorted(w.encode() for w in words)
    cuts = {w.encode()[i:j] for w in list(words)[:300] for i in range(3) for j in range(i + 1, i + 4)}
    vocab += sorted(c for c in cuts if c not in set(vocab))
    vocab += [p.encode() for p in ('"', '",', '"}', "\\", "\\n", " ", 'a"', 'д"')]
    vocab += [b"\xc0\xa2", b"\xe0\x80\xa2", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\x80", b"\xff"]
    trie = TokenTrie(vocab, [EOS])
    for hi in (None, 4, 10):
        schema = {"type": "object", "properties": {"s": {"type": "string"}}, "required": ["s"]}
        if hi is not None:
            schema["properties"]["s"]["maxLength"] = hi
        m = Matcher(Grammar.from_gbnf(schema_to_gbnf(schema)))
        for value in ("дед中😀é" * 3, "日本" + "a" * 9, "é" * 11, "🚀" * 4 + "x"):
            text = json.dumps({"s": value}, ensure_ascii=False).encode()
            fits = hi is None or len(value) <= hi
            assert m.accepts(text) == fits
            try:
                jsonschema.validate({"s": value}, schema)
                valid = True
            except jsonschema.ValidationError:
                valid = False
            assert valid == fits
            start = text.index(b'"', 5)
            for cut in range(start, len(text) + 1):
                state = m.feed(m.initial, text[:cut])
                if state is None:
                    break
                got = set(mask_ids(allowed_mask(trie, m, state)))
                want = brute_force(m, state, vocab, [EOS])
                assert got == want, (hi, text[:cut], sorted(got ^ want)[:5])
                for i in want - {EOS}:  # every allowed token keeps the text well-formed UTF-8 so far
                    assert _utf8_prefix(text[:cut] + vocab[i]), (text[:cut], vocab[i])
    runs = [s.run for s in m._states.values() if s.run is not None]
    assert any(r[3] for r in runs)  # runs of characters were taken (else this test checks nothing new)


def _utf8_prefix(data: bytes) -> bool:
    """Whether data is well-formed UTF-8 or a prefix of it (Python's strict decoder as the reference)."""
    for k in range(4):
        try:
            (data[: len(data) - k] if k else data).decode("utf-8")
        except UnicodeDecodeError:
            continue
        return k == 0 or _is_lead_of(data[len(data) - k :])
    return False


def _is_lead_of(tail: bytes) -> bool:
    """Whether `tail` (1-3 bytes) can begin a well-formed UTF-8 character."""
    return any(_decodes(tail + bytes([c] * 3)) for c in range(0x80, 0xC0))


def _decodes(data: bytes) -> bool:
    for n in range(1, 5):
        try:
            data[:n].decode("utf-8")
            return True
        except UnicodeDecodeError:
            pass
    return False


def test_a_grammar_no_token_can_follow_is_a_grammar_error():
    """A grammar whose next character no token of the vocabulary writes (here: none at all, a class of
    every code point negated) left an empty mask: the sampler drew no token and the engine blamed the
    model's weights (earlier, an IndexError). The mask says so instead, naming the output so far."""
    from webllm_py.checkpoint import open_checkpoint
    from webllm_py.structured.grammar import GrammarError

    tok = open_checkpoint(str(smollm2_gguf())).tokenizer
    with pytest.raises(GrammarError, match="no token"):
        Constraint(tok, "root ::= [^\\x00-\\U0010FFFF]\n").mask()
    c = Constraint(tok, 'root ::= "a" [^\\x00-\\U0010FFFF]\n')
    c.advance(tok.encode("a", add_special=False)[0])
    with pytest.raises(GrammarError, match="after b'a'"):
        c.mask()
    assert mask_ids(Constraint(tok, 'root ::= "a"\n').mask())  # a grammar a token can follow: a mask
