"""The chat path end to end in the browser: webllm.js -> worker (download with progress) -> the
engine in Pyodide -> WebGPU on SwiftShader, with the real SmolLM2-135M GGUF served by `serve`.

Reference: SmolLM2-135M-Instruct answers "What is the capital of France?" greedily with
"The capital of France is Paris." (HF transformers on CPython, see /work/shared/PLATFORM.md)."""

from __future__ import annotations

import pytest

from .conftest import CONFIG, open_page

pytestmark = [pytest.mark.browser, pytest.mark.slow]

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def chat_page(chromium, server_url):
    page = open_page(chromium, server_url + "chat.html")
    page.wait_for_function(
        "() => /Runtime ready/.test(document.getElementById('loadinfo').textContent)", timeout=CONFIG.READY_TIMEOUT_MS
    )
    yield page
    page.close()


def test_chat_page_lists_the_served_model(chat_page):
    options = chat_page.eval_on_selector_all("#models option", "os => os.map(o => o.value)")
    assert options == ["SmolLM2-135M-Instruct.Q4_1.gguf"]
    assert chat_page.errors == []


def test_load_stream_and_complete_through_webllm_js(chat_page):
    r = chat_page.evaluate(
        """async (messages) => {
        const progress = [];
        try {
            const engine = await webllm.create({ model: 'SmolLM2-135M-Instruct.Q4_1.gguf', onProgress: (p) => progress.push(p) });
            const chunks = [];
            const stream = await engine.chat.completions.create({ messages, stream: true, max_tokens: 8, temperature: 0 });
            for await (const c of stream) chunks.push(c);
            const full = await engine.chat.completions.create({ messages, max_tokens: 3, temperature: 0 });
            const stats = await engine.runtimeStats();
            await engine.unload();
            return { progress, chunks, full, stats };
        } catch (e) { return { error: `${e.name}: ${e.message}\\n${e.traceback || ''}` }; }
    }""",
        QUESTION,
    )
    assert "error" not in r, r.get("error")
    downloads = [p for p in r["progress"] if p.get("phase") == "download"]
    assert downloads and downloads[-1]["loaded"] == downloads[-1]["total"] > 90_000_000
    streamed = "".join(
        (c["choices"][0].get("delta") or {}).get("content") or "" for c in r["chunks"] if c.get("choices")
    )
    assert all(c["object"] == "chat.completion.chunk" for c in r["chunks"])
    full = r["full"]
    assert full["object"] == "chat.completion"
    text = full["choices"][0]["message"]["content"]
    # SwiftShader decodes slowly (seconds a token on a busy CI core): 8 tokens reach "Paris";
    # the non-streamed call asks for 3 and must agree with the stream's start (greedy both times).
    assert "Paris" in streamed
    assert len(text) > 0 and streamed.startswith(text)
    assert full["usage"]["completion_tokens"] == 3
    assert isinstance(r["stats"], dict)


def test_leaving_a_stream_early_stops_the_generation(chat_page):
    """A consumer that breaks out of `for await` after the first chunk: the worker stops generating (as
    engine.interrupt() does) and the next request runs within a token, not after the 99 more tokens asked for
    (0.25-0.5 s each on SwiftShader here: 25-50 s)."""
    r = chat_page.evaluate(
        """async (messages) => {
        const engine = await webllm.create({ model: 'SmolLM2-135M-Instruct.Q4_1.gguf' });
        const stream = await engine.chat.completions.create({ messages, stream: true, max_tokens: 100, ignore_eos: true, temperature: 0 });
        let n = 0;
        for await (const c of stream) { n += 1; break; }
        const t0 = performance.now();
        const next = engine.runtimeStats().then(() => performance.now() - t0);
        const ms = await Promise.race([next, new Promise((r) => setTimeout(() => r("still generating"), 10000))]);
        await next;
        await engine.unload();
        return { n, ms };
    }""",
        QUESTION,
    )
    assert r["n"] == 1
    assert r["ms"] != "still generating", r


def _finish_and_usage(chunks):
    finish = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    return finish, [c["usage"] for c in chunks if c.get("usage")]


def test_a_stream_whose_iterator_is_returned_before_its_first_read_stops(chat_page):
    """Leaving a stream ran from the iterator's `finally`, which a generator that was never started skips: an
    iterator closed before its first next() (ReadableStream.from(stream) cancelled before a read, a helper that
    takes the iterator and gives up) let the generation run to max_tokens for nobody, every later request
    waiting behind it (100 tokens: 25-50 s on SwiftShader). return() now leaves as a `break` does, and the stop,
    which reaches the worker before the generation starts, is no longer wiped as it starts: what came stays
    readable and says "abort" after at most the token under way."""
    r = chat_page.evaluate(
        """async (messages) => {
        const engine = await webllm.create({ model: 'SmolLM2-135M-Instruct.Q4_1.gguf' });
        const stream = await engine.chat.completions.create({ messages, stream: true, max_tokens: 100, ignore_eos: true,
                                                              temperature: 0, stream_options: { include_usage: true } });
        const closed = await stream[Symbol.asyncIterator]().return();
        const t0 = performance.now();
        const next = engine.runtimeStats().then(() => performance.now() - t0);
        const ms = await Promise.race([next, new Promise((r) => setTimeout(() => r("still generating"), 10000))]);
        await next;
        const chunks = [];
        for await (const c of stream) chunks.push(c);
        await engine.unload();
        return { closed, ms, chunks };
    }""",
        QUESTION,
    )
    assert r["closed"]["done"] is True, r["closed"]
    assert r["ms"] != "still generating", r["ms"]
    finish, usage = _finish_and_usage(r["chunks"])
    assert finish == ["abort"] and usage and usage[0]["completion_tokens"] <= 1, (finish, usage)


def test_a_second_loop_over_a_stream_is_refused_and_the_first_gets_every_chunk(chat_page):
    """Two `for await` loops over one stream each took every other chunk (one shared queue), and each put
    together half an answer. The second is now a RequestError and the first reads the whole answer; a loop
    after one that broke off reads on from there."""
    r = chat_page.evaluate(
        """async (messages) => {
        const engine = await webllm.create({ model: 'SmolLM2-135M-Instruct.Q4_1.gguf' });
        const req = { messages, stream: true, max_tokens: 6, ignore_eos: true, temperature: 0,
                      stream_options: { include_usage: true } };
        const stream = await engine.chat.completions.create(req);
        const first = [];
        const a = (async () => { for await (const c of stream) first.push(c); })();
        let second = null;
        try { for await (const c of stream) second = 'read a chunk'; } catch (e) { second = [e.name, e.message]; }
        await a;
        const again = await engine.chat.completions.create(req);
        const parts = [];
        for await (const c of again) { parts.push(c); break; }
        for await (const c of again) parts.push(c);
        const { stream_options, ...plain } = req;
        const whole = await engine.chat.completions.create({ ...plain, stream: false });
        await engine.unload();
        return { first, second, parts, whole: whole.choices[0].message.content };
    }""",
        QUESTION,
    )
    assert r["second"][0] == "RequestError" and "already being read" in r["second"][1], r["second"]
    finish, usage = _finish_and_usage(r["first"])
    assert finish == ["length"] and usage[0]["completion_tokens"] == 6, (finish, usage)
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in r["first"] if c["choices"])
    assert text == r["whole"], (text, r["whole"])  # the same greedy answer, not every other piece of it
    # the break stopped the second request's generation; the next loop still got the chunks that had come
    finish2, _ = _finish_and_usage(r["parts"])
    assert len(r["parts"]) >= 2 and finish2 in (["abort"], ["length"]), r["parts"]


def test_a_stream_interrupted_before_its_first_chunk_ends_at_once(chat_page):
    """stream.interrupt() right after create() (<webllm-chat>'s Stop right after Send): the stop reaches the
    worker before the generation starts. The engine kept one engine-wide flag and reset it as each generation
    began, so that stop was wiped and the answer ran to max_tokens (100: 25-50 s on SwiftShader); now the stop
    is the request's own and it ends with finish_reason "abort" after at most the token under way."""
    r = chat_page.evaluate(
        """async (messages) => {
        const engine = await webllm.create({ model: 'SmolLM2-135M-Instruct.Q4_1.gguf' });
        const stream = await engine.chat.completions.create({ messages, stream: true, max_tokens: 100, ignore_eos: true,
                                                              temperature: 0, stream_options: { include_usage: true } });
        const stopped = await stream.interrupt();
        const chunks = [];
        for await (const c of stream) chunks.push(c);
        await engine.unload();
        return { stopped, chunks };
    }""",
        QUESTION,
    )
    assert r["stopped"] == {"aborted": True}, r["stopped"]
    finish, usage = _finish_and_usage(r["chunks"])
    assert finish == ["abort"] and usage and usage[0]["completion_tokens"] <= 1, (finish, usage)


def test_a_dropped_stream_stops_and_the_next_request_runs(chat_page):
    """A stream that is created and never read (a component that unmounted, a reference dropped): once nobody
    has asked for a chunk for idleTimeout ms while chunks arrive, its generation stops (as interrupt() does)
    and the next request of the engine runs, instead of waiting behind the 99 more tokens asked for (25-50 s
    on SwiftShader here). The dropped stream keeps what came: finish_reason "abort", fewer tokens than asked."""
    r = chat_page.evaluate(
        """async (messages) => {
        const engine = await webllm.create({ model: 'SmolLM2-135M-Instruct.Q4_1.gguf' });
        const warned = [], warn = console.warn;
        console.warn = (...a) => { warned.push(a.join(' ')); warn(...a); };
        try {
          const bad = [];
          for (const idleTimeout of [-1, '5s']) {
            try { await engine.chat.completions.create({ messages, stream: true, idleTimeout }); bad.push('resolved'); }
            catch (e) { bad.push(e.name); }
          }
          const dropped = await engine.chat.completions.create({ messages, stream: true, max_tokens: 100, ignore_eos: true,
                                                                 temperature: 0, stream_options: { include_usage: true },
                                                                 idleTimeout: 1000 });
          const t0 = performance.now();
          const next = engine.runtimeStats().then(() => performance.now() - t0);
          const ms = await Promise.race([next, new Promise((r) => setTimeout(() => r("still generating"), 15000))]);
          await next;
          const chunks = [];
          for await (const c of dropped) chunks.push(c);
          await engine.unload();
          return { bad, ms, chunks, warned };
        } finally { console.warn = warn; }
    }""",
        QUESTION,
    )
    assert r["bad"] == ["RequestError", "RequestError"], r["bad"]
    assert r["ms"] != "still generating", r["ms"]
    finish = [
        c["choices"][0]["finish_reason"] for c in r["chunks"] if c["choices"] and c["choices"][0]["finish_reason"]
    ]
    usage = [c["usage"] for c in r["chunks"] if c.get("usage")]
    assert finish == ["abort"], finish
    assert usage and 0 < usage[0]["completion_tokens"] < 100, usage
    assert any("was not read for 1000 ms" in w for w in r["warned"]), r["warned"]
    assert chat_page.errors == []


def test_a_signal_that_is_not_an_abort_signal_is_a_request_error(chat_page):
    """signal: "x" threw an untyped TypeError (signal.addEventListener is not a function) from inside send."""
    r = chat_page.evaluate(
        """async (messages) => {
        const engine = await webllm.create({ model: 'SmolLM2-135M-Instruct.Q4_1.gguf' });
        const out = [];
        for (const stream of [false, true]) {
          try { await engine.chat.completions.create({ messages, stream, max_tokens: 1, signal: 'x' }); out.push('resolved'); }
          catch (e) { out.push([e.name, e.message]); }
        }
        const after = await engine.chat.completions.create({ messages, max_tokens: 1, temperature: 0 });
        await engine.unload();
        return { out, after: after.usage.completion_tokens };
    }""",
        QUESTION,
    )
    for name, message in r["out"]:
        assert (
            name == "RequestError" and "chat.completions.create: the signal option must be an AbortSignal" in message
        ), r
    assert r["after"] == 1


def test_a_stream_queued_behind_another_is_not_idle_while_it_waits(chat_page):
    """The idle clock starts when a chunk arrives (or at the last read), not when the request was made: stream B,
    made together with A, waits in the worker's queue while the page reads A (seconds); the page then pauses
    for less than B's idleTimeout before reading B. B runs to its max_tokens."""
    r = chat_page.evaluate(
        """async (messages) => {
        const engine = await webllm.create({ model: 'SmolLM2-135M-Instruct.Q4_1.gguf' });
        const ask = { messages, stream: true, max_tokens: 6, ignore_eos: true, temperature: 0, idleTimeout: 3000 };
        const t0 = performance.now();
        const a = await engine.chat.completions.create(ask);
        const b = await engine.chat.completions.create(ask);
        const finish = (chunks) => chunks.map((c) => c.choices[0] && c.choices[0].finish_reason).filter(Boolean);
        const readA = [];
        for await (const c of a) readA.push(c);
        const aSeconds = (performance.now() - t0) / 1000;
        await new Promise((r) => setTimeout(r, 1500));
        const readB = [];
        for await (const c of b) readB.push(c);
        await engine.unload();
        return { a: finish(readA), b: finish(readB), aSeconds };
    }""",
        QUESTION,
    )
    # B was made more than idleTimeout before its chunks were read (else this test shows nothing).
    assert r["aSeconds"] + 1.5 > 3, r
    assert r["a"] == ["length"] and r["b"] == ["length"], r


def test_request_values_json_cannot_carry_are_request_errors(chat_page):
    """A request travels as JSON. A function (a callback put in the request), a symbol or a DOM element (content:
    a <textarea> rather than its value) could not be posted to the worker: postMessage threw inside the client
    and the request never settled. NaN and Infinity became null, the field's default: temperature NaN sampled at
    1.0, max_tokens NaN had no limit. A BigInt failed in the worker as an untyped TypeError. Each is now a
    RequestError naming the field, before anything is sent, and the engine answers the next request."""
    r = chat_page.evaluate(
        """async (messages) => {
        const engine = await webllm.create({ model: 'SmolLM2-135M-Instruct.Q4_1.gguf' });
        const area = document.createElement('textarea');
        const cases = {
          fn: { onChunk: () => {} }, symbol: { user: Symbol('u') }, element: { messages: [{ role: 'user', content: area }] },
          nan: { temperature: NaN }, inf: { max_tokens: Infinity }, nested: { logit_bias: { 5: -Infinity } },
          bigint: { max_tokens: 2n },
        };
        const out = {};
        for (const [key, extra] of Object.entries(cases)) {
          const ask = engine.chat.completions.create({ messages, max_tokens: 1, temperature: 0, ...extra })
            .then(() => 'resolved', (e) => [e.name, e.message]);
          out[key] = await Promise.race([ask, new Promise((r) => setTimeout(() => r('never settled'), 20000))]);
        }
        const opt = webllm.create({ model: 'SmolLM2-135M-Instruct.Q4_1.gguf', onprogress: () => {} })
          .then(() => 'resolved', (e) => [e.name, e.message]);
        out.createOption = await Promise.race([opt, new Promise((r) => setTimeout(() => r('never settled'), 20000))]);
        const engine2 = await webllm.create({ model: 'SmolLM2-135M-Instruct.Q4_1.gguf' });
        out.after = (await engine2.chat.completions.create({ messages, max_tokens: 1, temperature: 0 })).usage.completion_tokens;
        await engine2.unload();
        return out;
    }""",
        QUESTION,
    )
    named = {
        "fn": "onChunk",
        "symbol": "user",
        "nan": "temperature",
        "inf": "max_tokens",
        "nested": "logit_bias.5",
        "bigint": "max_tokens",
        "element": "messages[0].content",
        "createOption": "onprogress",
    }
    for key, field in named.items():
        assert isinstance(r[key], list) and r[key][0] == "RequestError", (key, r[key])
        assert field in r[key][1], (key, r[key])
    assert r["after"] == 1


def test_stream_that_is_not_a_boolean_is_a_request_error(chat_page):
    """stream was read by truthiness on both sides (webllm.js picks an iterator or a completion by it, worker.py
    took bool() of it): stream: "false" or 1 returned an async iterator to a page that awaited a completion
    (Python's own create() refuses them). null is OpenAI's default, no stream."""
    r = chat_page.evaluate(
        """async (messages) => {
        const engine = await webllm.create({ model: 'SmolLM2-135M-Instruct.Q4_1.gguf' });
        const out = {};
        for (const [key, stream] of [['str', 'false'], ['one', 1], ['obj', {}]]) {
          for (const api of ['chat', 'completion']) {
            const call = api === 'chat' ? engine.chat.completions.create({ messages, stream, max_tokens: 1 })
                                        : engine.completions.create({ prompt: 'Hi', stream, max_tokens: 1 });
            out[`${api} ${key}`] = await call.then((v) => typeof v[Symbol.asyncIterator] === 'function' ? 'a stream' : 'a completion',
                                                   (e) => [e.name, e.message]);
          }
        }
        const plain = await engine.chat.completions.create({ messages, stream: null, max_tokens: 1, temperature: 0 });
        out.null = plain.object;
        await engine.unload();
        return out;
    }""",
        QUESTION,
    )
    assert r.pop("null") == "chat.completion"
    for key, v in r.items():
        assert isinstance(v, list) and v[0] == "RequestError" and "stream must be true or false" in v[1], (key, v)
