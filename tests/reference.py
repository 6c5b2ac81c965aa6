"""Independent references on CPython: Hugging Face transformers running the same checkpoint."""
from __future__ import annotations

import functools
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
    import torch

    model, _ = hf_model(path)
    out, first_logits = [], None
    with torch.no_grad():
        x = torch.tensor([ids])
        past = None
        for _ in range(n):
            r = model(input_ids=x, past_key_values=past, use_cache=True)
            past = r.past_key_values
            logits = r.logits[0, -1]
            if first_logits is None:
                first_logits = logits.double().numpy()
            nxt = int(torch.argmax(logits))
            out.append(nxt)
            x = torch.tensor([[nxt]])
    return out, first_logits
