"""Multi-turn chat reuses the KV cache: the second turn's prompt starts with the first turn's
conversation, so only the new tokens are prefilled (`cached_prompt_tokens` > 0), and the answer is
the same greedy text Hugging Face transformers gives for the whole second-turn prompt from scratch
(and the same as our own engine from an empty cache)."""

import asyncio

import pytest

from webllm_py.api import create
from webllm_py.default_model import default_model_path

from .reference import hf_greedy, hf_model

pytestmark = [pytest.mark.gpu, pytest.mark.slow]

N = 4


def test_second_turn_reuses_the_prefix_and_matches_a_fresh_run(device):
    path = str(default_model_path())
    _, hf_tok = hf_model(path)

    async def main():
        engine = await create(path, device=device, context_window=256, prefill_chunk=32)
        chat = engine.chat.completions
        turn1 = [{"role": "user", "content": "What is the capital of France?"}]
        r1 = await chat.create(messages=turn1, max_tokens=N, temperature=0)
        s1 = engine.runtime_stats()
        turn2 = turn1 + [
            {"role": "assistant", "content": r1["choices"][0]["message"]["content"]},
            {"role": "user", "content": "And of Germany?"},
        ]
        r2 = await chat.create(messages=turn2, max_tokens=N, temperature=0)
        s2 = engine.runtime_stats()
        engine.engine.reset(0)  # forget the conversation: the same request from an empty cache
        r3 = await chat.create(messages=turn2, max_tokens=N, temperature=0)
        s3 = engine.runtime_stats()
        engine.unload()
        return r1, s1, turn2, r2, s2, r3, s3

    r1, s1, turn2, r2, s2, r3, s3 = asyncio.run(main())
    assert s1["cached_prompt_tokens"] == 0
    ids2 = hf_tok.apply_chat_template(turn2, add_generation_prompt=True, tokenize=True)
    ids2 = list(ids2["input_ids"] if isinstance(ids2, dict) or hasattr(ids2, "keys") else ids2)
    assert s2["prompt_tokens"] == len(ids2)
    # The whole first turn's prompt (at least) came from the cache; only the rest was prefilled.
    assert s1["prompt_tokens"] <= s2["cached_prompt_tokens"] < s2["prompt_tokens"]
    assert s3["cached_prompt_tokens"] == 0

    ref_ids, _ = hf_greedy(path, ids2, N)
    ref_text = hf_tok.decode(ref_ids, skip_special_tokens=True)
    text2 = r2["choices"][0]["message"]["content"]
    assert text2 == ref_text
    assert r3["choices"][0]["message"]["content"] == text2
