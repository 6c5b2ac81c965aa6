"""A stop belongs to its request (engine.Interrupt). It was an engine-wide flag that each generation reset
as it began: a stop that came first (the worker's `interrupt` abort of a request it had just taken, a page's
Stop right after Send) was wiped and the request ran to max_tokens; and a stop meant for a request queued
behind another ended the running one instead. Checked through the worker's Session (the path the page's
aborts take) and through the Python API, on a tiny random model (tests/hf_models.py) on lavapipe."""

from __future__ import annotations

import asyncio
import json

import pytest

from webllm_py import worker
from webllm_py.engine import Interrupt

pytestmark = [pytest.mark.gpu]

N = 12  # tokens asked for: an interrupt that was lost shows as N tokens and finish_reason "length"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, device, loop):
    import webllm_py

    from .hf_models import BY_NAME, build

    path = build(BY_NAME["llama-tied-bias-f32"], tmp_path_factory.mktemp("interrupt"))
    return loop.run_until_complete(webllm_py.create(path, device=device, context_window=256, prefill_chunk=32))


def _request(prompt: str) -> str:
    return json.dumps(
        {
            "prompt": prompt,
            "max_tokens": N,
            "temperature": 0,
            "ignore_eos": True,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
    )


def _outcome(chunks: list[dict]) -> tuple[str | None, int, str]:
    """(finish_reason, completion_tokens, text) of a streamed completion's chunks."""
    finish = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    text = "".join(c["choices"][0]["text"] for c in chunks if c["choices"])
    assert len(finish) == 1, chunks
    return finish[0], chunks[-1]["usage"]["completion_tokens"], text


class _Handled:
    """One request handed to a worker Session as worker.js does; its chunks are collected as they come."""

    def __init__(self, session: worker.Session, id: int, prompt: str):
        self.chunks: list[dict] = []
        emit = lambda kind, payload: self.chunks.append(json.loads(payload))  # noqa: E731
        self.task = asyncio.ensure_future(session.handle("completion", id, _request(prompt), emit))

    async def outcome(self) -> tuple[str | None, int, str]:
        msg = json.loads(await asyncio.wait_for(self.task, 60))
        assert msg["kind"] == "result", msg
        return _outcome(self.chunks)


def test_a_stop_sent_before_the_generation_starts_ends_it_at_once(tiny, loop):
    session = worker.Session()
    session.engine = tiny

    async def scenario():
        alone = await _Handled(session, 1, "Once upon").outcome()
        # worker.js read the abort before it called handle: the Session keeps it and applies it as it starts.
        assert session.abort(2, "interrupt", handed=True) is True
        before_handle = await _Handled(session, 2, "Once upon").outcome()
        # handle ran and made the task, whose body (tokenising, then the engine) has not run yet.
        h = _Handled(session, 3, "Once upon")
        await asyncio.sleep(0)
        assert session.abort(3, "interrupt") is True  # found running
        before_body = await h.outcome()
        return alone, before_handle, before_body

    alone, before_handle, before_body = loop.run_until_complete(scenario())
    assert alone[:2] == ("length", N), alone
    assert before_handle == ("abort", 0, ""), before_handle
    assert before_body == ("abort", 0, ""), before_body

    # The Python API: an Interrupt set before create() (or before the request's first pull) ends it the same
    # way, streamed or not; the engine is untouched by it (the same request then gives what it gave alone).
    async def python_api():
        stop = Interrupt()
        stop.set()
        plain = await tiny.completions.create(
            prompt="Once upon", max_tokens=N, temperature=0, ignore_eos=True, interrupt=stop
        )
        stop = Interrupt()
        stream = tiny.completions.create(
            prompt="Once upon",
            max_tokens=N,
            temperature=0,
            ignore_eos=True,
            stream=True,
            stream_options={"include_usage": True},
            interrupt=stop,
        )
        stop.set()
        streamed = [c async for c in stream]
        again = await tiny.completions.create(prompt="Once upon", max_tokens=N, temperature=0, ignore_eos=True)
        return plain, streamed, again

    plain, streamed, again = loop.run_until_complete(python_api())
    assert plain["choices"][0]["finish_reason"] == "abort" and plain["usage"]["completion_tokens"] == 0, plain
    assert plain["choices"][0]["text"] == ""
    assert _outcome(streamed) == ("abort", 0, ""), streamed
    assert again["choices"][0]["text"] == alone[2] and again["choices"][0]["finish_reason"] == "length"


def test_interrupting_a_queued_request_leaves_the_running_one_alone(tiny, loop):
    session = worker.Session()
    session.engine = tiny
    engine = tiny.engine

    async def until(cond):
        for _ in range(6000):
            if cond():
                return
            await asyncio.sleep(0.01)
        raise AssertionError("timed out")

    async def scenario():
        alone = await _Handled(session, 1, "Once upon").outcome()
        running = _Handled(session, 2, "Once upon")
        await until(lambda: running.chunks)  # it holds the engine
        queued = _Handled(session, 3, "The sky is")
        await until(lambda: engine._queue)  # it waits for the engine
        assert session.abort(3, "interrupt") is True
        return alone, await running.outcome(), await queued.outcome()

    alone, running, queued = loop.run_until_complete(scenario())
    assert running == alone and running[:2] == ("length", N), (running, alone)
    assert queued == ("abort", 0, ""), queued

    # engine.interrupt() (no request named) still stops the running generation, and only it.
    async def no_argument():
        first = tiny.completions.create(prompt="Once upon", max_tokens=N, temperature=0, ignore_eos=True, stream=True)
        await first.__anext__()  # it holds the engine
        second = asyncio.ensure_future(
            tiny.completions.create(prompt="The sky is", max_tokens=N, temperature=0, ignore_eos=True)
        )
        await until(lambda: engine._queue)
        tiny.interrupt()
        rest = [c async for c in first]
        return rest, await asyncio.wait_for(second, 60)

    rest, second = loop.run_until_complete(no_argument())
    assert [c["choices"][0]["finish_reason"] for c in rest if c["choices"][0]["finish_reason"]] == ["abort"]
    assert len(rest) < N, rest
    assert second["choices"][0]["finish_reason"] == "length" and second["usage"]["completion_tokens"] == N


def test_a_queued_request_that_is_stopped_leaves_at_once(tiny, loop):
    """A stop set while its request waited behind another was seen only once the one ahead had finished (a
    long answer, or one whose reader paused): the stopped request hung on for nothing. Now it leaves the
    queue at once and the running one is untouched."""
    engine = tiny.engine

    async def scenario():
        first = tiny.completions.create(prompt="Once upon", max_tokens=N, temperature=0, ignore_eos=True, stream=True)
        head = [await first.__anext__()]  # it holds the engine, its reader paused
        stop = Interrupt()
        second = asyncio.ensure_future(
            tiny.completions.create(prompt="The sky is", max_tokens=N, temperature=0, interrupt=stop)
        )
        for _ in range(500):
            if engine._queue:
                break
            await asyncio.sleep(0.01)
        assert engine._queue, "the second request never queued"
        stop.set()
        stopped = await asyncio.wait_for(second, 5)  # before: waited for the first's reader, forever here
        held = engine._holder is not None and not engine._queue
        rest = [c async for c in first]
        return stopped, held, head + rest

    stopped, held, chunks = loop.run_until_complete(scenario())
    assert stopped["choices"][0]["finish_reason"] == "abort" and stopped["usage"]["completion_tokens"] == 0, stopped
    assert held  # the first still held the engine when the second had left
    finish = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"][0]["finish_reason"]]
    assert finish == ["length"] and sum(bool(c["choices"][0]["text"]) for c in chunks) >= 1, chunks


def test_a_stop_during_a_long_prompt_lands_between_its_chunks(tiny, loop):
    """On a CPU adapter a prompt's chunks took seconds each (64 tokens of SmolLM2 on SwiftShader: ~12 s) and
    were queued back to back, so a stop landed only after the whole prompt. Now (planner.prefill_waits) each
    chunk is waited for and the stop checked before the next: the request ends "abort" with no tokens, the
    chunks that ran stay cached, and the same prompt afterwards gives what it gives from scratch."""
    from webllm_py import planner

    engine = tiny.engine
    assert engine.prefill_waits == planner.prefill_waits(planner.Adapter.of(engine.device)) is True  # lavapipe
    assert planner.prefill_waits(planner.Adapter(cpu=False)) is False  # GPUs queue the chunks back to back

    class AfterTwoChunks(Interrupt):
        """Set from its third check on: the first is as the request takes the engine, the next ones come
        between chunks, so two chunks run."""

        checks = 0

        def is_set(self) -> bool:
            self.checks += 1
            return self.checks >= 3 or super().is_set()

    prompt = "one two three four five six seven eight nine ten " * 12
    kw = dict(prompt=prompt, max_tokens=4, temperature=0, ignore_eos=True)
    n_prompt = len(engine.tokenizer.encode(prompt))
    chunk = engine.prefill_chunk
    assert n_prompt > 3 * chunk, (n_prompt, chunk)
    tiny.engine.reset(0)
    stop = AfterTwoChunks()
    stopped = loop.run_until_complete(tiny.completions.create(**kw, interrupt=stop))
    ran = len(engine._cached[0])
    engine.reset(0)
    fresh = loop.run_until_complete(tiny.completions.create(**kw))
    assert stopped["choices"][0]["finish_reason"] == "abort" and stopped["usage"]["completion_tokens"] == 0, stopped
    assert ran == 2 * chunk < n_prompt, (ran, chunk, n_prompt)  # two chunks ran, the rest never did
    # the prompt again, after a stopped one left its first chunks cached: the same as from scratch
    engine.reset(0)
    loop.run_until_complete(tiny.completions.create(**kw, interrupt=AfterTwoChunks()))
    again = loop.run_until_complete(tiny.completions.create(**kw))
    assert again["usage"]["extra"]["cached_prompt_tokens"] == 2 * chunk, again["usage"]
    assert again["choices"][0]["text"] == fresh["choices"][0]["text"], (again, fresh)
