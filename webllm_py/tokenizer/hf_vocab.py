"""The Tokenizer's arguments from a Hugging Face `tokenizer.json` (+ optional `tokenizer_config.json`).

Either argument may be a dict (already parsed) or a path. Supported: model type "BPE" with a byte-level
pre-tokenizer (GPT-2 / Llama 3 / Qwen2 / SmolLM), or SentencePiece-style (Metaspace pre-tokenizer or the
Prepend/Replace normalizer pair, byte fallback). Anything else raises TokenizerError naming what is missing.
"""

import json
import os
from typing import Any

from ..errors import TokenizerError
from .pretokenize import HF_SPLIT_PATTERNS, split_digit_runs, split_each_digit, split_gpt2
from .token_types import SPACE_MARK, TokenType

# Where transformers' save_pretrained writes the chat template (not into tokenizer_config.json); checkpoint.py
# reads it from a folder given as {file name: bytes}.
CHAT_TEMPLATE_FILE = "chat_template.jinja"


def _load_json(obj):
    if obj is None or isinstance(obj, dict):
        return obj, None
    path = os.fspath(obj)
    with open(path, encoding="utf-8") as f:
        return json.load(f), os.path.dirname(path)


def _flatten(component, key):
    """A component and, for a Sequence, its parts (`key`: "pretokenizers", "normalizers", ...)."""
    if not component:
        return []
    if component.get("type") == "Sequence":
        out = []
        for c in component.get(key, []):
            out.extend(_flatten(c, key))
        return out
    return [component]


def _token_text(value):
    """tokenizer_config.json writes special tokens as a string or as {"content": ...}."""
    if isinstance(value, dict):
        return value.get("content")
    return value


# A real tokenizer.json numbers its tokens 0..n-1, at most with a few holes; ids this far past the count of
# entries are refused before a list is sized by them (an id of 2**40 would otherwise ask for terabytes)
ID_HOLES_MAX = 1 << 16


def _vocab_size(ids: list) -> int:
    """One more than the largest token id, after checking that every id is a plausible list index."""
    bound = len(ids) + ID_HOLES_MAX
    for i in ids:
        if type(i) is not int or not 0 <= i < bound:
            raise TokenizerError(
                f"tokenizer.json token id {i!r} is not an integer in [0, {bound}) ({len(ids)} tokens listed)"[:300]
            )
    return max(ids, default=-1) + 1


def tokenizer_args_from_hf(tokenizer_json, tokenizer_config=None) -> dict[str, Any]:
    """Tokenizer(**these) for a tokenizer.json (and tokenizer_config.json)."""
    tj, json_dir = _load_json(tokenizer_json)
    cfg, cfg_dir = _load_json(tokenizer_config)
    if cfg is None and json_dir is not None and os.path.exists(os.path.join(json_dir, "tokenizer_config.json")):
        cfg, cfg_dir = _load_json(os.path.join(json_dir, "tokenizer_config.json"))
    cfg = cfg or {}

    model = tj.get("model") or {}
    if model.get("type", "BPE") != "BPE" or "merges" not in model:
        raise TokenizerError(f"tokenizer.json model type {model.get('type')!r} is not supported (only BPE)")
    vocab = model["vocab"]
    added = tj.get("added_tokens") or []
    size = _vocab_size([*vocab.values(), *(a["id"] for a in added)])
    pieces = [None] * size
    kinds = [TokenType.NORMAL] * size
    for piece, i in vocab.items():
        pieces[i] = piece
    for a in added:
        pieces[a["id"]] = a["content"]
        kinds[a["id"]] = TokenType.CONTROL if a.get("special") else TokenType.USER_DEFINED
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    ranks = dict(zip(reversed(merges), range(len(merges) - 1, -1, -1)))
    piece_id = {p: i for i, p in enumerate(pieces) if p is not None}
    unk_id = piece_id.get(model.get("unk_token")) if model.get("unk_token") else None

    # Pre-tokenizer -> split stages, and which family this is.
    stages, byte_level, prefix_space, word_split, space_prefix = [], False, False, None, "never"
    for pt in _flatten(tj.get("pre_tokenizer"), "pretokenizers"):
        kind = pt.get("type")
        if kind == "ByteLevel":
            byte_level = True
            prefix_space = bool(pt.get("add_prefix_space"))
            if pt.get("use_regex", True):
                stages.append(split_gpt2)
        elif kind == "Split":
            pattern = (pt.get("pattern") or {}).get("Regex")
            split = HF_SPLIT_PATTERNS.get(pattern)
            if split is None or pt.get("behavior") != "Isolated" or pt.get("invert"):
                raise TokenizerError(
                    f"tokenizer.json Split pre-tokenizer {pattern!r} ({pt.get('behavior')}) is not supported"
                )
            stages.append(split)
        elif kind == "Digits":
            stages.append(split_each_digit if pt.get("individual_digits") else split_digit_runs)
        elif kind == "Metaspace":
            if pt.get("replacement", SPACE_MARK) != SPACE_MARK:
                raise TokenizerError("Metaspace with a replacement other than U+2581 is not supported")
            word_split = "metaspace" if pt.get("split", True) else None
            scheme = pt.get("prepend_scheme") or ("always" if pt.get("add_prefix_space", True) else "never")
            space_prefix = scheme
        else:
            raise TokenizerError(f"tokenizer.json pre-tokenizer {kind!r} is not supported")
    if not byte_level and (tj.get("decoder") or {}).get("type") == "ByteLevel":
        byte_level = True

    if not byte_level:
        # SentencePiece converted to BPE: the normalizer turns spaces into U+2581 (and may prepend one).
        for nm in _flatten(tj.get("normalizer"), "normalizers"):
            kind = nm.get("type")
            if kind == "Prepend" and nm.get("prepend") == SPACE_MARK:
                space_prefix = "always"
            elif (
                kind == "Replace" and (nm.get("pattern") or {}).get("String") == " " and nm.get("content") == SPACE_MARK
            ):
                pass
            else:
                raise TokenizerError(f"tokenizer.json normalizer {kind!r} is not supported")
    elif tj.get("normalizer"):
        raise TokenizerError("a normalizer in front of a byte-level BPE tokenizer is not supported")

    # Post-processor: which special tokens encode(add_special=True) puts around the text.
    prefix_ids, suffix_ids = [], []
    for pp in _flatten(tj.get("post_processor"), "processors"):
        if pp.get("type") == "TemplateProcessing":
            specials = pp.get("special_tokens") or {}
            seen_seq = False
            for item in pp.get("single") or []:
                if "Sequence" in item:
                    seen_seq = True
                elif "SpecialToken" in item:
                    ids = specials.get(item["SpecialToken"]["id"], {}).get("ids") or []
                    (suffix_ids if seen_seq else prefix_ids).extend(ids)

    bos_text = _token_text(cfg.get("bos_token"))
    eos_text = _token_text(cfg.get("eos_token"))
    special_map = {}
    for name in ("bos_token", "eos_token", "unk_token", "pad_token"):
        text = _token_text(cfg.get(name))
        if text is not None:
            special_map[name] = text
    if cfg.get("additional_special_tokens"):
        special_map["additional_special_tokens"] = [_token_text(t) for t in cfg["additional_special_tokens"]]

    template = cfg.get("chat_template")
    if isinstance(template, list):  # [{"name": "default", "template": ...}, {"name": "tool_use", ...}]
        by_name = {t.get("name"): t.get("template") for t in template}
        template = by_name.get("default") or next(iter(by_name.values()), None)
    if template is None:
        for d in (cfg_dir, json_dir):
            if d and os.path.exists(os.path.join(d, CHAT_TEMPLATE_FILE)):
                with open(os.path.join(d, CHAT_TEMPLATE_FILE), encoding="utf-8") as f:
                    template = f.read()
                break

    common = dict(
        pieces=pieces,
        kinds=kinds,
        ranks=ranks,
        ignore_merges=bool(model.get("ignore_merges")),
        unk_id=unk_id,
        bos_id=piece_id.get(bos_text) if bos_text else None,
        eos_id=piece_id.get(eos_text) if eos_text else None,
        prefix_ids=prefix_ids,
        suffix_ids=suffix_ids,
        chat_template=template,
        special_tokens_map=special_map,
    )
    if byte_level:
        return dict(
            mode="byte_bpe", stages=stages, byte_level_prefix_space=prefix_space, drop_unknown_first=True, **common
        )
    return dict(
        mode="spm_ranks",
        byte_fallback=bool(model.get("byte_fallback")),
        word_split=word_split,
        add_space_prefix=space_prefix,
        **common,
    )
