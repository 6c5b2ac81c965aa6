"""The public surface the engine relies on: special-token parsing switches, EOS sets, byte views of tokens,
typed errors. Expectations come from the vocabularies themselves (token texts, GGUF ids), not our output."""

import numpy as np
import pytest

from .tokenizer_helpers import VOCAB_DIR, HF_DIR, gguf_metadata, require, smollm2_gguf
from webllm_py.errors import TokenizerError
from webllm_py.tokenizer import StreamDecoder, Tokenizer


@pytest.fixture(scope="module")
def smollm2():
    return Tokenizer.from_gguf_metadata(gguf_metadata(smollm2_gguf()))


@pytest.fixture(scope="module")
def llama_spm():
    return Tokenizer.from_gguf_metadata(gguf_metadata(require(VOCAB_DIR / "ggml-vocab-llama-spm.gguf")))


def test_parse_special_switch(smollm2):
    im_start = smollm2.piece_to_id("<|im_start|>")
    assert smollm2.encode("<|im_start|>user", add_special=False)[0] == im_start
    plain = smollm2.encode("<|im_start|>user", add_special=False, parse_special=False)
    assert im_start not in plain
    assert smollm2.decode(plain) == "<|im_start|>user"


def test_bos_eos_from_metadata(smollm2, llama_spm):
    meta = gguf_metadata(smollm2_gguf())
    assert smollm2.bos_id == meta["tokenizer.ggml.bos_token_id"]
    assert meta["tokenizer.ggml.eos_token_id"] in smollm2.eos_ids
    assert smollm2.piece_to_id("<|im_end|>") in smollm2.eos_ids
    assert smollm2.vocab_size == len(meta["tokenizer.ggml.tokens"])
    # Llama 2 (SentencePiece): BOS added by default, not EOS.
    ids = llama_spm.encode("Hello")
    assert ids[0] == llama_spm.bos_id == 1 and 2 not in ids and llama_spm.eos_ids == {2}


def test_eos_ids_include_end_of_turn_tokens():
    qwen = Tokenizer.from_gguf_metadata(gguf_metadata(require(VOCAB_DIR / "ggml-vocab-qwen2.gguf")))
    assert qwen.piece_to_id("<|im_end|>") in qwen.eos_ids
    llama3 = Tokenizer.from_hf(require(HF_DIR / "llama3" / "tokenizer.json"))
    assert {llama3.piece_to_id("<|eot_id|>"), llama3.piece_to_id("<|end_of_text|>")} <= llama3.eos_ids


def test_token_bytes(smollm2, llama_spm):
    assert llama_spm.token_bytes(llama_spm.piece_to_id("<0xE4>")) == b"\xe4"
    assert llama_spm.token_bytes(llama_spm.piece_to_id("\u2581Hello")) == b" Hello"
    assert llama_spm.id_to_piece(llama_spm.piece_to_id("\u2581Hello")) == "\u2581Hello"
    # Byte-level: "Ġ" is the space byte, "Ċ" the newline byte (GPT-2's byte table).
    assert smollm2.token_bytes(smollm2.piece_to_id("Ġthe")) == b" the"
    assert smollm2.token_bytes(smollm2.piece_to_id("Ċ")) == b"\n"
    ids = smollm2.encode("你好 🦙", add_special=False)
    assert b"".join(smollm2.token_bytes(i) for i in ids) == "你好 🦙".encode()


def test_stream_skip_special(smollm2):
    ids = smollm2.encode("<|im_start|>assistant\nHi there<|im_end|>", add_special=False)
    dec = StreamDecoder(smollm2, skip_special=True)
    out = "".join(dec.feed(i) for i in ids) + dec.flush()
    assert out == "assistant\nHi there" == smollm2.decode(ids, skip_special=True)


def test_unknown_pre_tokenizer_is_refused():
    meta = dict(gguf_metadata(require(VOCAB_DIR / "ggml-vocab-gpt-2.gguf")))
    meta["tokenizer.ggml.pre"] = "no-such-pre"
    with pytest.raises(TokenizerError, match="no-such-pre"):
        Tokenizer.from_gguf_metadata(meta)
    with pytest.raises(TokenizerError, match="no tokenizer"):
        Tokenizer.from_gguf_metadata({"general.architecture": "llama"})


def test_token_ids_are_checked_alike_by_every_lookup(smollm2):
    """decode() refused numpy's ints as "not in this vocabulary" (ids from np.argmax, a numpy prompt, which
    Engine.generate takes); token_bytes(-1) was the last token's bytes (Python's negative index) and
    token_bytes(vocab_size) an IndexError; decode(5) a TypeError. Now every lookup takes any integer in
    range, numpy's too, and refuses anything else with a TokenizerError naming the id."""
    ids = smollm2.encode("Hello world", add_special=False)
    want = smollm2.decode(ids)
    assert smollm2.decode(np.array(ids, dtype=np.int64)) == want == smollm2.decode([np.int32(i) for i in ids])
    assert smollm2.token_bytes(np.int64(ids[0])) == smollm2.token_bytes(ids[0])
    V = smollm2.vocab_size
    for bad in (-1, V, 2**40, 1.0, True, "1", None):
        for lookup in (smollm2.token_bytes, smollm2.id_to_piece, smollm2.is_special, lambda i: smollm2.decode([i])):
            with pytest.raises(TokenizerError, match="not in this vocabulary"):
                lookup(bad)
    for bad in (5, None, "Hi"):
        with pytest.raises(TokenizerError, match="list of token ids"):
            smollm2.decode(bad)
    assert smollm2.decode(ids) == want  # still usable
