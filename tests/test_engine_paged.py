"""Paged KV cache at the engine level: two sequences of different lengths, decoded step by step in
alternation (their blocks interleaved in the pool), give the same greedy tokens as each run alone."""

import asyncio

import pytest

from webllm_py.default_model import default_model_path
from webllm_py.engine import Engine
from webllm_py.sampling import SamplingParams

pytestmark = [pytest.mark.gpu, pytest.mark.slow]

N_NEW = 4


async def _greedy(engine, runs: dict[int, list[int]], interleave: bool) -> dict[int, list[int]]:
    """Greedy-decode each sequence; steps go A, B, A, B... when interleaved, else A to the end then B.
    Uses the engine's step directly (the public generate() serves one request at a time by design)."""
    engine.sampler.set_params(SamplingParams(temperature=0.0))
    engine.sampler.reset([])
    out = {seq: [] for seq in runs}
    for seq in runs:
        engine.reset(seq)
        engine._cached[seq] = []
    order = [(s, i) for i in range(N_NEW) for s in runs] if interleave else [(s, i) for s in runs for i in range(N_NEW)]
    for seq, i in order:
        ids = runs[seq] if i == 0 else [out[seq][-1]]
        res = await engine._step(seq, ids, sample=True)
        out[seq].append(res.token_id)
    for seq in runs:
        engine.reset(seq)
    return out


def test_interleaved_sequences_match_each_alone(device):
    async def main():
        # Block size 16 and prompts of 21 and 5 tokens: both sequences own several non-adjacent blocks.
        engine = await Engine.load(default_model_path(), device=device, context_window=128, prefill_chunk=32)
        tok = engine.tokenizer
        a = tok.encode("The quick brown fox jumps over the lazy dog, and then the dog wakes up and")
        b = tok.encode("Paris is the capital of")
        assert len(a) > 16 > len(b)
        alone_a = await _greedy(engine, {1: a}, interleave=False)
        alone_b = await _greedy(engine, {2: b}, interleave=False)
        both = await _greedy(engine, {1: a, 2: b}, interleave=True)
        assert both[1] == alone_a[1]
        assert both[2] == alone_b[2]
        assert all(c.free_blocks == c.num_blocks for c in engine.cache)  # everything returned

    asyncio.run(main())


def test_unload_keeps_a_shared_device_usable(device):
    """An engine given a device (shared by tests, or by several engines) frees its own memory on
    unload but leaves the device alive."""
    import numpy as np

    engine = asyncio.run(Engine.load(default_model_path(), device=device, context_window=64))
    engine.unload()
    x = np.arange(8, dtype=np.float32)
    buf = device.buffer_from(x)
    assert np.array_equal(np.frombuffer(asyncio.run(device.read_buffer(buf)), np.float32), x)


def test_prompt_programs_carry_nothing_of_the_prompt_they_were_captured_from(device):
    """A prompt step replays the Program captured at the first prompt of its token count
    (Engine._prompt_program): a later prompt of that count, other tokens, at other positions (after a cached
    prefix) on another sequence, gets the logits a fresh engine computes for it; the kept Programs stay
    within PROMPT_PROGRAMS."""
    import numpy as np

    from webllm_py.engine import PROMPT_PROGRAMS

    async def last_logits(engine, seq, chunks):
        engine.reset(seq)
        engine._cached[seq] = []
        for chunk in chunks:
            await engine._step(seq, chunk, sample=False)
        with device.recorder() as rec:
            engine.model.record_head(rec, len(chunks[-1]))
        out = np.frombuffer(await device.read_buffer(engine.model.state.logits), np.float32).copy()
        engine.reset(seq)
        return out

    async def main():
        load = Engine.load(default_model_path(), device=device, context_window=128, prefill_chunk=32)
        engine = await load
        tok = engine.tokenizer
        a = tok.encode("The quick brown fox jumps over the lazy dog")
        prefix, b = tok.encode("Paris is"), tok.encode("the capital of France, and Berlin is that of")[: len(a)]
        assert len(b) == len(a) and len(prefix) != len(a)
        await last_logits(engine, 1, [a])  # captures the program of len(a) tokens at positions 0..
        kept = engine._prompt_programs[len(a)]
        got = await last_logits(engine, 2, [prefix, b])  # b replays it at positions len(prefix)..
        assert engine._prompt_programs[len(a)] is kept
        fresh = await Engine.load(default_model_path(), device=device, context_window=128, prefill_chunk=32)
        want = await last_logits(fresh, 2, [prefix, b])
        np.testing.assert_array_equal(got, want)
        for n in range(1, PROMPT_PROGRAMS + 3):
            await last_logits(engine, 1, [a[:n]])
        assert len(engine._prompt_programs) == PROMPT_PROGRAMS
        assert list(engine._prompt_programs) == list(range(3, PROMPT_PROGRAMS + 3))  # the most recent counts
        engine.unload()
        fresh.unload()

    asyncio.run(main())
