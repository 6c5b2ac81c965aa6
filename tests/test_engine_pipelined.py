"""Pipelined decode (Engine._decode_pipelined): each step takes its input id from the previous step's
sample on the GPU, and the host reads step k's token while step k+1 runs (and k+2 at Engine.decode_depth 3). What a caller sees must not
change: the real SmolLM2's token streams (ids, text, logprobs, top logprobs, finish reasons) equal the
stepped path's (each step waiting for its readback, as before), greedy tokens equal transformers', and
the cache keeps exactly the tokens whose K/V the stream implies (prefix reuse after a stop or an abort
gives transformers' tokens for the next prompt). The Dawn twin is in tests/test_dawn.py.
~45 s on 2 cores (the model loads and transformers' references included)."""

from __future__ import annotations

import asyncio

import pytest

from webllm_py.default_model import default_model_path
from webllm_py.engine import DECODE_DEPTH, Engine, Stats
from webllm_py.sampling import SamplingParams

from .model_checks import REAL_MODELS, assert_greedy_parity
from .reference import hf_greedy, hf_margins

pytestmark = [pytest.mark.gpu]

MODEL = REAL_MODELS["smollm2"]
SAMPLED = dict(temperature=0.9, top_k=40, top_p=0.95, frequency_penalty=0.5, seed=1234, logprobs=True, top_logprobs=2)


@pytest.fixture(scope="module")
def engine(device):
    return asyncio.run(Engine.load(default_model_path(), device=device, context_window=256, prefill_chunk=16))


def run(engine, prompt, *, pipelined=True, depth=2, fresh=True, interrupt_after=None, close_after=None, **kw):
    """(tokens as (id, text, logprob, top_logprobs), stats, the ids the cache keeps for the sequence); depth:
    Engine.decode_depth, the pipelined steps in flight."""
    engine.pipelined_decode = pipelined
    engine.decode_depth = depth
    if fresh:
        engine.reset(0)
    stats = Stats()

    async def go():
        out, gen = [], engine.generate(prompt, stats=stats, **kw)
        async for t in gen:
            out.append((t.id, t.text, t.logprob, t.top_logprobs))
            if len(out) == interrupt_after:
                engine.interrupt()
            if len(out) == close_after:
                await gen.aclose()  # the consumer stops pulling mid-stream
                break
        return out

    try:
        toks = asyncio.run(go())
    finally:
        engine.pipelined_decode = True
        engine.decode_depth = DECODE_DEPTH
    return toks, stats, list(engine._cached.get(0, []))


def both(engine, prompt, **kw):
    """The pipelined run (two steps in flight, and three: Engine.decode_depth), after asserting each equals the
    stepped run in everything a caller sees."""
    stepped = run(engine, prompt, pipelined=False, **kw)
    runs = {depth: run(engine, prompt, depth=depth, **kw) for depth in (2, 3)}
    for depth, piped in runs.items():
        assert piped[0] == stepped[0], depth
        assert piped[1].finish_reason == stepped[1].finish_reason, depth
        assert piped[1].completion_tokens == stepped[1].completion_tokens, depth
        assert piped[2] == stepped[2], depth
    return runs[DECODE_DEPTH]


def ids_of(toks):
    return [t[0] for t in toks if t[0] >= 0]


def fed(prompt, toks):
    """The ids whose K/V a stream implies: the prompt and every emitted token but the last (never an input)."""
    return list(prompt) + ids_of(toks)[:-1]


@pytest.mark.parametrize("params", [dict(temperature=0.0, logprobs=True, top_logprobs=5), SAMPLED])
def test_streams_equal_the_stepped_path(engine, params):
    prompt = engine.tokenizer.encode(MODEL.prompt)
    n = 16
    toks, stats, cached = both(engine, prompt, params=SamplingParams(**params), max_tokens=n, ignore_eos=True)
    assert stats.finish_reason == "length" and stats.completion_tokens == n == len(ids_of(toks))
    assert all(t[2] is not None and len(t[3]) == params["top_logprobs"] for t in toks if t[0] >= 0)
    assert cached == fed(prompt, toks)
    if params["temperature"] == 0:  # and transformers' greedy tokens (near ties named, not failed)
        ref, _ = hf_greedy(MODEL.path, prompt, n)
        assert_greedy_parity(
            lambda p, k: ids_of(
                run(engine, p, params=SamplingParams(temperature=0.0), max_tokens=k, ignore_eos=True)[0]
            ),
            prompt,
            ref,
            hf_margins(MODEL.path, prompt, n),
            MODEL.logit_rtol,
            "SmolLM2 pipelined",
        )
    else:  # a seeded draw, not the greedy path
        greedy = run(engine, prompt, params=SamplingParams(temperature=0.0), max_tokens=n, ignore_eos=True)[0]
        assert ids_of(toks) != ids_of(greedy)


@pytest.mark.parametrize("n", [1, 2, 3])
def test_max_tokens(engine, n):
    prompt = engine.tokenizer.encode(MODEL.prompt)
    toks, stats, cached = both(engine, prompt, params=SamplingParams(**SAMPLED), max_tokens=n, ignore_eos=True)
    assert stats.finish_reason == "length" and len(ids_of(toks)) == n
    assert cached == fed(prompt, toks)


def test_eos_and_stop_string(engine):
    tok = engine.tokenizer
    chat = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}])
    prompt = tok.encode(chat, add_special=False)
    greedy = SamplingParams(temperature=0.0)
    toks, stats, cached = both(engine, prompt, params=greedy, max_tokens=64)
    text = "".join(t[1] for t in toks)
    assert stats.finish_reason == "stop" and stats.completion_tokens < 64 and "Paris" in text  # EOS ended it
    assert cached == list(prompt) + ids_of(toks)  # the last token was an input: its sample was EOS
    toks, stats, cached = both(engine, prompt, params=greedy, max_tokens=64, stop=["Paris"])
    assert stats.finish_reason == "stop" and "".join(t[1] for t in toks) == text[: text.index("Paris")]
    assert cached == fed(prompt, toks)


@pytest.mark.parametrize("how", ["interrupt", "close"])
def test_prefix_reuse_after_an_abort(engine, how):
    """The step run past the last token is discarded: after an interrupt the cache keeps the tokens fed
    (a consumer closing the stream drops the sequence, as before), and the next prompt, which goes on
    from them with a token other than the one that step was fed, gives transformers' tokens."""
    tok = engine.tokenizer
    prompt = tok.encode(MODEL.prompt)
    stop = {"interrupt_after": 3} if how == "interrupt" else {"close_after": 3}
    toks, stats, cached = both(engine, prompt, params=SamplingParams(temperature=0.0), max_tokens=32, **stop)
    assert len(ids_of(toks)) == 3
    kept = fed(prompt, toks)
    assert (stats.finish_reason, cached) == (("abort", kept) if how == "interrupt" else (None, []))
    follow = kept + tok.encode(" and ends", add_special=False)
    assert follow[len(kept)] != ids_of(toks)[-1]
    n = 8
    ref, _ = hf_greedy(MODEL.path, follow, n)
    assert min(hf_margins(MODEL.path, follow, n)) > 2 * MODEL.logit_rtol  # equal tokens are what to expect
    for pipelined in (True, False):
        run(engine, prompt, pipelined=pipelined, params=SamplingParams(temperature=0.0), max_tokens=32, **stop)
        again, stats, _ = run(
            engine, follow, pipelined=pipelined, fresh=False, params=SamplingParams(temperature=0.0), max_tokens=n
        )
        assert stats.cached_prompt_tokens == len(cached)
        assert ids_of(again) == ref


def test_cache_full_mid_stream(device):
    """Another sequence holds all but one KV block: the step that needs a second raises KVCacheFullError
    after the same tokens as the stepped path (the pipelined steps run ahead meet it one or two tokens early)."""
    from webllm_py.errors import KVCacheFullError

    # 2 sequences of 64 positions: a pool of 8 blocks of 16
    engine = asyncio.run(Engine.load(default_model_path(), device=device, context_window=64, prefill_chunk=64))
    try:
        ids = engine.tokenizer.encode(MODEL.prompt * 10)
        for seq, n in ((1, 63), (2, 33)):  # 4 + 3 blocks
            asyncio.run(engine.complete(ids[:n], params=SamplingParams(temperature=0.0), max_tokens=1, seq=seq))
        (cache,) = list(engine.cache)
        assert cache.free_blocks == 1
        prompt = ids[:6]  # positions 0-15 fit one block: the prefill's token and 10 decoded ones, then full
        streams = []
        for pipelined, depth in ((True, 2), (True, 3), (False, 2)):
            out: list = []

            async def go():
                async for t in engine.generate(prompt, SamplingParams(temperature=0.0), max_tokens=40, ignore_eos=True):
                    out.append((t.id, t.text, t.logprob))

            engine.pipelined_decode, engine.decode_depth = pipelined, depth
            with pytest.raises(KVCacheFullError):
                asyncio.run(go())
            streams.append(out)
            assert cache.free_blocks == 1 and 0 not in engine._cached  # the failed sequence was reset
        assert streams[0] == streams[1] == streams[2] and len(ids_of(streams[0])) == 11
    finally:
        engine.unload()
