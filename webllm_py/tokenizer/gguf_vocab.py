"""The Tokenizer's arguments from a GGUF file's tokenizer metadata (a plain {key: value} dict, arrays as lists).

Keys (llama.cpp's names): tokenizer.ggml.model ("gpt2" = byte-level BPE, "llama" = SentencePiece),
tokenizer.ggml.pre (which split pattern), .tokens, .merges, .token_type, .scores, .bos_token_id,
.eos_token_id, .eot_token_id, .eom_token_id, .unknown_token_id, .add_bos_token, .add_eos_token,
.add_space_prefix, tokenizer.chat_template.
"""

from typing import Any

from ..errors import TokenizerError
from ..formats.gguf_keys import Tokenizer as Keys
from .pretokenize import gguf_pre_tokenizer
from .token_types import TokenType

# Pre-tokenizer names for which llama.cpp sets ignore_merges (a word that is itself a piece is not merged) and
# add_bos by default.
_IGNORE_MERGES = {
    "llama3",
    "llama-v3",
    "llama-bpe",
    "falcon3",
    "falcon-h1",
    "pixtral",
    "midm-2.0",
    "lfm2",
    "jina-v5-nano",
    "glm4",
    "glm5",
    "tekken",
    "youtu",
    "minicpm5",
}
_ADD_BOS = {
    "llama3",
    "llama-v3",
    "llama-bpe",
    "falcon3",
    "falcon-h1",
    "pixtral",
    "midm-2.0",
    "lfm2",
    "jina-v5-nano",
    "tekken",
    "chameleon",
}


def _opt_id(meta, key):
    v = meta.get(key)
    return None if v is None or v < 0 else int(v)


def _ranks(merges) -> dict:
    """{"left right": rank}; the first occurrence of a merge wins (as in llama.cpp)."""
    n = len(merges)
    return dict(zip(reversed(merges), range(n - 1, -1, -1)))


def tokenizer_args_from_gguf(meta: dict) -> dict[str, Any]:
    """Tokenizer(**these) for a GGUF file's tokenizer metadata."""
    model = meta.get(Keys.MODEL)
    tokens = meta.get(Keys.LIST)
    if model is None or tokens is None:
        raise TokenizerError(
            "GGUF metadata has no tokenizer.ggml.model / tokenizer.ggml.tokens: this file carries no tokenizer"
        )
    kinds = list(meta.get(Keys.TOKEN_TYPE) or [TokenType.NORMAL] * len(tokens))
    if len(kinds) != len(tokens):
        raise TokenizerError("tokenizer.ggml.token_type and tokenizer.ggml.tokens differ in length")
    pre = meta.get(Keys.PRE)
    bos = _opt_id(meta, Keys.BOS_ID)
    eos = _opt_id(meta, Keys.EOS_ID)
    eos_ids = {i for i in (_opt_id(meta, Keys.EOT_ID), _opt_id(meta, Keys.EOM_ID)) if i is not None}
    common = dict(
        pieces=tokens,
        kinds=kinds,
        unk_id=_opt_id(meta, Keys.UNK_ID),
        bos_id=bos,
        eos_id=eos,
        eos_ids=eos_ids,
        chat_template=meta.get(Keys.CHAT_TEMPLATE),
    )

    if model == "gpt2":
        ranks = _ranks(meta.get(Keys.MERGES) or [])
        add_bos = meta.get(Keys.ADD_BOS, pre in _ADD_BOS)
        add_eos = meta.get(Keys.ADD_EOS, False)
        return dict(
            mode="byte_bpe",
            stages=gguf_pre_tokenizer(pre),
            ranks=ranks,
            ignore_merges=pre in _IGNORE_MERGES,
            prefix_ids=[bos] if add_bos and bos is not None else [],
            suffix_ids=[eos] if add_eos and eos is not None else [],
            **common,
        )
    if model == "llama":
        scores = meta.get(Keys.SCORES)
        if scores is None:
            raise TokenizerError("SentencePiece GGUF vocabulary without tokenizer.ggml.scores")
        add_bos = meta.get(Keys.ADD_BOS, True)
        add_eos = meta.get(Keys.ADD_EOS, False)
        return dict(
            mode="spm_scores",
            scores=scores,
            add_space_prefix=meta.get(Keys.ADD_PREFIX, True),
            prefix_ids=[bos] if add_bos and bos is not None else [],
            suffix_ids=[eos] if add_eos and eos is not None else [],
            **common,
        )
    if model == "gemma4":
        # SentencePiece-style BPE over raw characters (spaces as U+2581), merged by rank, split only at newline
        # runs; llama.cpp always adds BOS for it.
        ranks = _ranks(meta.get(Keys.MERGES) or [])
        add_eos = meta.get(Keys.ADD_EOS, False)
        return dict(
            mode="spm_ranks",
            ranks=ranks,
            word_split="newlines",
            add_space_prefix=meta.get(Keys.ADD_PREFIX, False),
            prefix_ids=[bos] if bos is not None else [],
            suffix_ids=[eos] if add_eos and eos is not None else [],
            **common,
        )
    raise TokenizerError(
        f"GGUF tokenizer model {model!r} is not supported (supported: 'gpt2' byte-level BPE, 'llama' SentencePiece BPE)"
    )
