"""Embedding anywhere (issue 14): a page of another origin with no COOP/COEP (served by a plain
http.server) uses the runtime from `serve`'s origin through webllm.js, webllm.mjs and <webllm-chat>;
and the static build (`python -m webllm_py build`) answers from its chat page when a plain
http.server serves it, with every request going to that one origin.

The pages of the embedding origin are written here and name the runtime's absolute URLs; neither
the embedding page nor the static build's host sends any special header. One model load per page
(SmolLM2 on SwiftShader: tens of seconds each), shared by the assertions on that page.

Reference: SmolLM2-135M-Instruct answers "What is the capital of France?" greedily with "The capital
of France is Paris." (HF transformers on CPython, see /work/shared/PLATFORM.md)."""

from __future__ import annotations

import functools
import http.server
import threading

import pytest

from webllm_py import serve, static_site

from .conftest import CONFIG

pytestmark = [pytest.mark.browser, pytest.mark.slow]

MODEL = "SmolLM2-135M-Instruct.Q4_1.gguf"
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
NO_ICON = '<link rel="icon" href="data:,">'  # no favicon request (a 404 in the console)


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    """Python's own static file server, as a web developer runs it: no COOP/COEP, no CORS."""

    csp: dict = {}  # page name -> a Content-Security-Policy header sent with it

    def log_message(self, fmt, *args) -> None:
        pass

    def end_headers(self) -> None:
        policy = self.csp.get(self.path.lstrip("/"))
        if policy:
            self.send_header("Content-Security-Policy", policy)
        super().end_headers()


# docs/product.md's policy for a page that embeds the runtime from RUNTIME (the worker's imports are
# fetched as "worker" requests, hence RUNTIME in worker-src; the blob: worker inherits this policy).
EMBED_CSP = (
    "default-src 'self'; script-src 'self' RUNTIME 'wasm-unsafe-eval'; worker-src blob: RUNTIME; "
    "connect-src 'self' RUNTIME; style-src 'self'; img-src 'self' data:; object-src 'none'; "
    "base-uri 'none'; form-action 'none'"
)


def plain_http_server(directory, csp=None):
    handler = type("Handler", (QuietHandler,), {"csp": csp or {}})
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(directory)))
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}/"
    return srv


def stop(srv):
    srv.shutdown()
    srv.server_close()


@pytest.fixture(scope="module")
def runtime():
    """`serve` on port B (its default headers: CORP cross-origin, CORS *)."""
    srv = serve.start_in_thread(port=0, site=serve.build_site())
    srv.url = serve.server_url(srv)
    yield srv
    stop(srv)


@pytest.fixture(scope="module")
def embedder(runtime, tmp_path_factory):
    """A plain http.server on port A with two pages naming the runtime on port B."""
    d = tmp_path_factory.mktemp("embedder")
    b = runtime.url
    (d / "classic.html").write_text(
        f'<!doctype html><meta charset="utf-8">{NO_ICON}<title>classic</title>\n<script src="{b}webllm.js"></script>\n'
    )
    (d / "module.html").write_text(
        f'<!doctype html><meta charset="utf-8">{NO_ICON}<title>module</title>\n'
        f'<script type="module">import webllm from "{b}webllm.mjs"; window.viaModule = webllm;</script>\n'
        f'<script type="module" src="{b}webllm-chat.js"></script>\n'
        f'<webllm-chat model="{MODEL}" max-tokens="8" temperature="0"></webllm-chat>\n'
    )
    (d / "csp.html").write_text((d / "classic.html").read_text())
    srv = plain_http_server(d, csp={"csp.html": EMBED_CSP.replace("RUNTIME", b.rstrip("/"))})
    srv.dir = d
    yield srv
    stop(srv)


def new_page(context, url):
    page = context.new_page()
    page.set_default_timeout(CONFIG.READY_TIMEOUT_MS)
    page.errors, page.requests, page.failed = [], [], []
    page.on("pageerror", lambda e: page.errors.append(str(e)))
    page.on("console", lambda m: m.type == "error" and page.errors.append(m.text))
    # The context's events include the worker's requests. The browser's own favicon request gets no
    # 404 from a host that has none (no console error).
    context.route("**/favicon.ico", lambda route: route.fulfill(status=204))
    context.on("request", lambda r: page.requests.append(r.url))
    context.on("requestfailed", lambda r: page.failed.append(r.url))
    context.on("response", lambda r: r.status >= 400 and page.failed.append(f"{r.status} {r.url}"))
    page.goto(url)
    return page


@pytest.fixture
def context(chromium):
    ctx = chromium.new_context()  # a fresh profile: empty caches, nothing from other tests
    yield ctx
    ctx.close()


# Creates the engine, then streams until "Paris" shows and stops the stream with interrupt(), which
# on a page without SharedArrayBuffer reaches the worker as a message (at Python's next await).
_CREATE_AND_STREAM = """async ([api, model, messages]) => {
  try {
    const progress = [];
    const engine = await window[api].create({ model, onProgress: (p) => progress.push(p) });
    window.engine = engine;
    let text = "", finish = null;
    const stream = await engine.chat.completions.create({ messages, stream: true, max_tokens: 12, temperature: 0 });
    for await (const c of stream) {
      const ch = c.choices[0];
      if (!ch) continue;
      text += ch.delta.content || "";
      if (ch.finish_reason) finish = ch.finish_reason;
      if (/Paris/.test(text) && !finish) await engine.interrupt();
    }
    return { text, finish, cache: progress.filter((p) => p.phase === "cache").map((p) => p.state),
             downloaded: progress.filter((p) => p.phase === "download").map((p) => p.url).slice(-1)[0] };
  } catch (e) { return { error: `${e.name}: ${e.message}\\n${e.traceback || ""}` }; }
}"""


def test_classic_script_from_another_origin_gets_the_whole_api(context, runtime, embedder):
    page = new_page(context, embedder.url + "classic.html")
    b = runtime.url
    info = page.evaluate("() => webllm.ready()")
    # The embedding page is not isolated: no SharedArrayBuffer, and nothing needs it.
    assert info["crossOriginIsolated"] is False and info["interruptible"] is False
    assert page.evaluate("() => [self.crossOriginIsolated, typeof SharedArrayBuffer, webllm.baseURL]") == [
        False,
        "undefined",
        b + "webllm.js",
    ]
    assert page.evaluate("() => webllm.runPython('import sys; sys.platform')") == "emscripten"

    r = page.evaluate(_CREATE_AND_STREAM, ["webllm", MODEL, QUESTION])
    assert "error" not in r, r["error"]
    assert "Paris" in r["text"] and "The capital of France is Paris.".startswith(r["text"].strip())
    assert r["finish"] in ("abort", "stop"), r
    assert r["cache"] == ["miss", "stored"] and r["downloaded"] == b + "models/" + MODEL

    rest = page.evaluate(
        """async ([model, messages]) => {
      const out = {};
      try {
        // AbortSignal: the running request fails with AbortedError (a message: no shared memory here).
        const ctl = new AbortController();
        try {
          const s = await engine.chat.completions.create({ messages, stream: true, max_tokens: 6, temperature: 0, signal: ctl.signal });
          for await (const c of s) ctl.abort();
          out.abort = "finished";
        } catch (e) { out.abort = e.name; }
        // Structured output: a grammar allows only these two answers.
        const g = await engine.chat.completions.create({ messages, max_tokens: 4, temperature: 0,
          response_format: { type: "grammar", grammar: 'root ::= "Paris" | "Lyon"' } });
        out.grammar = g.choices[0].message.content;
        // The model cache is the embedding page's: its origin's Cache Storage holds the file.
        out.has = await webllm.hasModelInCache(model);
        out.keys = (await (await caches.open("webllm-models")).keys()).map((k) => k.url);
        out.deleted = await webllm.deleteModel(model);
        out.hasAfter = await webllm.hasModelInCache(model);
      } catch (e) { out.error = `${e.name}: ${e.message}\\n${e.traceback || ""}`; }
      return out;
    }""",
        [MODEL, QUESTION],
    )
    assert "error" not in rest, rest["error"]
    assert rest["abort"] == "AbortedError"
    assert rest["grammar"] in ("Paris", "Lyon")
    assert rest["has"] is True and rest["keys"] == [b + "models/" + MODEL]
    assert rest["deleted"] is True and rest["hasAfter"] is False
    # Every runtime file came from the runtime's origin; only the page itself from the embedder's.
    runtime_files = [
        u for u in page.requests if any(p in u for p in ("/pyodide/", "/wheels/", "/models/", "worker.js"))
    ]
    assert runtime_files and all(u.startswith(b) for u in runtime_files), runtime_files
    assert [u for u in page.requests if u.startswith(embedder.url)] == [embedder.url + "classic.html"]
    assert page.failed == [] and page.errors == []
    # ... and the runtime's origin stores nothing for it.
    page.goto(b + "models/index.json")
    assert page.evaluate("async () => (await (await caches.open('webllm-models')).keys()).length") == 0
    page.close()


def test_module_and_widget_from_another_origin_stream_an_answer(context, runtime, embedder):
    page = new_page(context, embedder.url + "module.html")
    page.wait_for_function("() => window.viaModule && customElements.get('webllm-chat')")
    assert page.evaluate("() => viaModule.baseURL") == runtime.url
    r = page.evaluate(_CREATE_AND_STREAM, ["viaModule", MODEL, QUESTION])
    assert "error" not in r, r["error"]
    assert "Paris" in r["text"] and "The capital of France is Paris.".startswith(r["text"].strip())
    page.evaluate("() => engine.unload()")  # one engine's GPU memory at a time
    w = page.evaluate(
        """async (q) => {
      const el = document.querySelector("webllm-chat");
      const reply = await el.send(q);
      return { reply, error: el.shadowRoot.querySelector(".error").textContent };
    }""",
        QUESTION[0]["content"],
    )
    assert w["error"] == "", w["error"]
    assert "Paris" in w["reply"] and "The capital of France is Paris.".startswith(w["reply"].strip())
    assert page.failed == [] and page.errors == []
    page.close()


@pytest.fixture(scope="module")
def static_build(tmp_path_factory):
    out = tmp_path_factory.mktemp("static") / "site"
    manifest = static_site.build(out)  # the default model (SmolLM2), as `serve` serves it
    assert [m["name"] for m in manifest["models"]] == [MODEL]
    srv = plain_http_server(out)
    srv.out = out
    yield srv
    stop(srv)


def test_static_build_on_a_plain_server_answers_from_its_chat_page(context, static_build):
    page = new_page(context, static_build.url + "chat.html")
    page.wait_for_function("() => /Runtime ready/.test(document.getElementById('loadinfo').textContent)")
    page.wait_for_function("() => document.getElementById('model').value")
    page.click("#load")
    page.wait_for_function("() => /^Loaded /.test(document.getElementById('loadinfo').textContent)")
    page.click("#settings summary")  # max tokens and temperature live in the Settings fold-out
    page.fill("#max_tokens", "2")
    page.fill("#temperature", "0")
    page.click("#settings summary")
    page.fill("#prompt", QUESTION[0]["content"])
    page.click("#send")
    page.wait_for_function(
        "() => !document.getElementById('send').disabled && /tokens/.test(document.getElementById('speed').textContent)"
    )
    reply = page.text_content(".msg.assistant .body").strip()
    assert reply.startswith("The capital"), reply
    assert page.text_content("#error") == ""
    # The network log: this origin only, and no request the build could not answer.
    http_requests = [u for u in page.requests if u.startswith("http")]
    assert any(u.endswith("/models/" + MODEL) for u in http_requests)
    assert any("/pyodide/pyodide.asm.wasm" in u for u in http_requests)
    assert all(u.startswith(static_build.url) for u in http_requests), http_requests
    assert page.failed == [], page.failed
    assert page.errors == []
    page.close()


def test_embedding_page_under_a_strict_csp_and_a_host_without_cors(context, runtime, embedder, static_build):
    """No model: the documented CSP lets the runtime start and run Python while the worker is under
    the policy (eval refused); a runtime host that sends no CORS gives a WorkerError saying so."""
    page = new_page(context, embedder.url + "csp.html")
    assert page.evaluate("() => webllm.ready().then((i) => i.crossOriginIsolated)") is False
    r = page.evaluate("""() => webllm.runPython(
      "import js\\ntry:\\n    js.eval('1')\\n    r = 'eval ran'\\nexcept Exception as e:\\n    r = str(e)\\nr")""")
    assert "EvalError" in r or "Content Security Policy" in r, r
    assert page.failed == [] and page.errors == []
    page.close()

    (embedder.dir / "nocors.html").write_text(
        f'<!doctype html><meta charset="utf-8">{NO_ICON}<script src="{static_build.url}webllm.js"></script>\n'
    )
    page = new_page(context, embedder.url + "nocors.html")
    e = page.evaluate("() => webllm.ready().then(() => null, (e) => ({ name: e.name, message: e.message }))")
    assert e and e["name"] == "WorkerError" and "Access-Control-Allow-Origin" in e["message"], e
    page.close()
