"""Independent references on CPython: Hugging Face transformers running the same checkpoint."""

from __future__ import annotations

import functools
import inspect
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@functools.lru_cache(maxsize=4)
def hf_model(path: str):
    """(model, tokenizer) loaded by transformers from a GGUF file or a HF directory, in f32."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if os.path.isdir(path):
        kw = {}
        d = path
    else:
        d, kw = os.path.dirname(path), {"gguf_file": os.path.basename(path)}
    tok = AutoTokenizer.from_pretrained(d, **kw)
    model = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32, **kw)
    model.eval()
    return model, tok


def hf_greedy(path: str, ids: list[int], n: int) -> tuple[list[int], "list"]:
    """n greedy tokens after `ids` (EOS does not stop it), and the logits of the prompt's last token."""
    tokens, first_logits, _ = _greedy_steps(path, tuple(ids), n)
    return list(tokens), first_logits


def hf_margins(path: str, ids: list[int], n: int) -> list[float]:
    """Top-2 logit gap / max|logit| at each of transformers' n greedy steps after `ids`: a test of
    token equality is meaningful only where these exceed twice its logit tolerance."""
    return list(_greedy_steps(path, tuple(ids), n)[2])


# Results only (ids, one logits row, margins: a few MB at most), so many are kept: the real models'
# 64-step references are computed once per run for their native and Dawn tests, tiny models' in between.
@functools.lru_cache(maxsize=64)
def _greedy_steps(path: str, ids: tuple[int, ...], n: int):
    return greedy_steps(hf_model(path)[0], ids, n)


def greedy_steps(model, ids, n: int) -> tuple[list[int], "list", list[float]]:
    """Transformers model `model`'s n greedy tokens after `ids`, the logits of the prompt's last token,
    and each step's top-2 margin (as hf_margins)."""
    import torch

    # transformers 5.x renamed the KV cache argument and output `cache` (`past_key_values` goes in 5.40)
    key = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    tokens, first_logits, margins = [], None, []
    with torch.no_grad():
        x, past = torch.tensor([ids]), None
        for _ in range(n):
            r = model(input_ids=x, use_cache=True, **{key: past})
            past, logits = getattr(r, key), r.logits[0, -1]
            if first_logits is None:
                first_logits = logits.double().numpy()
            top = torch.topk(logits, 2).values
            margins.append(float((top[0] - top[1]) / logits.abs().max()))
            nxt = int(torch.argmax(logits))
            tokens.append(nxt)
            x = torch.tensor([[nxt]])
    return tokens, first_logits, margins


# The prompt of the tiny random models' tests: 20+ tokens, so it spans three prefill chunks of 8.
TINY_TEXT = (
    "The history of the printing press begins in Mainz, where Johannes Gutenberg combined movable "
    "metal type with an oil-based ink around 1440."
)


def prompt_ids(path: str, n: int, text: str = TINY_TEXT) -> list[int]:
    """The first n ids of `text` by the checkpoint's own (transformers) tokenizer."""
    ids = hf_model(path)[1](text).input_ids
    assert len(ids) >= n
    return ids[:n]
