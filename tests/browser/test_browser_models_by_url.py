"""Models by URL in the browser (docs/product.md "Models by URL"): `hf:` names through a local mimic of
the Hugging Face Hub, split GGUFs, the model cache offline, the Python entry point in Pyodide, and each
bad-URL case as a typed error with the worker still usable.

The mimic is two servers on two ports, like the Hub and its CDN: `/<owner>/<repo>/resolve/<rev>/<file>`
answers 302 to the other port, both send CORS headers and the CDN honours Range. The model is SmolLM2
split into 3 shards by gguf-py's writer (tests/gguf_split.py). The runtime's page is served WITHOUT
COOP/COEP (the common embedding case, and the one where a CORS refusal can be told from a dead server).
Reference for the answer: HF transformers' greedy reply to QUESTION is "The capital of France is Paris."
(PLATFORM.md), so after the template and "The capital of France is" the next greedy token is " Paris".
One model load from the network and one (from Python, offline) from the cache serve every case."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

import pytest

from tests.gguf_split import split_gguf
from webllm_py import serve
from webllm_py.checkpoint import open_checkpoint
from webllm_py.default_model import default_model_path

from .conftest import CONFIG

pytestmark = [pytest.mark.browser]

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
REPO = "owner/repo"
NAME = "SmolLM2-135M-Instruct.Q4_1-00001-of-00003.gguf"
CORS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Headers": "Range",
    "Access-Control-Expose-Headers": "Content-Length, Content-Range, Accept-Ranges",
}


class Mimic(BaseHTTPRequestHandler):
    """The Hub (role "hub": resolve paths -> 302 to the CDN) or its CDN (role "cdn": files, Range)."""

    protocol_version = "HTTP/1.1"
    role: str
    state: dict  # shared: files {name: bytes}, cdn (URL), log [(role, path, range)], cut {name}

    def log_message(self, *a) -> None:
        pass

    def _send(self, status, body=b"", headers=None, cors=True, length=None):
        self.send_response(status)
        for k, v in {**(CORS if cors else {}), **(headers or {})}.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body) if length is None else length))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_OPTIONS(self):
        self._send(204)

    def do_HEAD(self):
        self.do_GET()

    def do_GET(self):
        path = unquote(urlsplit(self.path).path)
        rng = self.headers.get("Range")
        self.state["log"].append((self.role, path, rng))
        if self.role == "hub":
            prefix = f"/{REPO}/resolve/main/"
            if not path.startswith(prefix):
                return self._send(404, b"Repository not found")
            return self._send(302, headers={"Location": self.state["cdn"] + "/cdn/" + path[len(prefix) :]})
        name = path.removeprefix("/cdn/")
        files = self.state["files"]
        if name == "page.gguf":  # an HTML error page with status 200
            return self._send(
                200, b"<!DOCTYPE html><html><body>Sign in to continue</body></html>", {"Content-Type": "text/html"}
            )
        if name == "short.gguf":  # announces 1 MiB, sends 4 KiB and closes: every time
            self.close_connection = True
            return self._send(200, b"GGUF" + bytes(4092), {"Content-Type": "application/octet-stream"}, length=1 << 20)
        if name == "stall.gguf":  # announces 1 MiB, sends 4 KiB, then nothing (the connection stays open)
            self.close_connection = True
            self._send(200, b"GGUF" + bytes(4092), {"Content-Type": "application/octet-stream"}, length=1 << 20)
            self.wfile.flush()
            time.sleep(3)
            return
        if name not in files:
            return self._send(404, b"Entry not found")
        data = files[name]
        if name == "long.gguf":  # announces 4 KiB less than it sends
            self.close_connection = True
            return self._send(200, data, {"Content-Type": "application/octet-stream"}, length=len(data) - 4096)
        start, status, headers = 0, 200, {"Accept-Ranges": "bytes", "Content-Type": "application/octet-stream"}
        if rng:
            start, end = serve.parse_range(rng, len(data))
            status, headers["Content-Range"] = 206, f"bytes {start}-{end}/{len(data)}"
        body = data[start:]
        if name in self.state["cut"] and not rng:  # the first full response drops half-way
            self.state["cut"].discard(name)
            self.close_connection = True
            self.send_response(status)
            for k, v in {**CORS, **headers, "Content-Length": str(len(body))}.items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body[: len(body) // 2])
            return
        self._send(status, body, headers, cors=name != "nocors.gguf")


def start(handler):
    srv = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv, f"http://127.0.0.1:{srv.server_address[1]}"


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    shards = split_gguf(default_model_path(), tmp_path_factory.mktemp("shards"), 3)
    tiny = b"GGUF" + bytes(60)
    state = {"files": {p.name: p.read_bytes() for p in shards}, "log": [], "cut": {shards[1].name}}
    state["files"].update(
        {
            "nocors.gguf": tiny,
            "gone-00001-of-00002.gguf": tiny,
            "tiny.gguf": tiny,
            "long.gguf": open(default_model_path(), "rb").read(),
        }
    )
    cdn, state["cdn"] = start(type("CDN", (Mimic,), {"role": "cdn", "state": state}))
    srv, url = start(type("Hub", (Mimic,), {"role": "hub", "state": state}))
    srv.endpoint, srv.state, srv.cdn_url = url, state, state["cdn"]
    yield srv
    for s in (srv, cdn):
        s.shutdown()
        s.server_close()


class NotIsolated(serve.Handler):
    """serve's site without COOP/COEP: a page that is not cross-origin isolated."""

    def send_header(self, key, value):
        if key not in ("Cross-Origin-Opener-Policy", "Cross-Origin-Embedder-Policy"):
            super().send_header(key, value)


@pytest.fixture(scope="module")
def page(chromium):
    srv = serve.Server(("127.0.0.1", 0), type("Site", (NotIsolated,), {"site": serve.build_site()}))
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    ctx = chromium.new_context()  # its own storage: an empty model cache
    page = ctx.new_page()
    page.set_default_timeout(CONFIG.READY_TIMEOUT_MS)
    page.goto(serve.server_url(srv) + "script-tag.html")
    info = page.evaluate("() => webllm.ready()")
    assert info["crossOriginIsolated"] is False
    yield page
    ctx.close()
    srv.shutdown()
    srv.server_close()


@pytest.fixture(scope="module")
def prompt():
    """The chat template's text for QUESTION plus the start of the reference answer."""
    tok = open_checkpoint(default_model_path()).tokenizer
    return tok.apply_chat_template(QUESTION, add_generation_prompt=True) + "The capital of France is"


_CREATE = """async ([model, hfEndpoint]) => {
  const progress = [];
  try {
    window.engine = await webllm.create({ model, hfEndpoint, onProgress: (p) => progress.push(p) });
    return { ok: true, progress: progress.filter((p) => p.phase && (p.phase !== 'download' || p.loaded === p.total)) };
  } catch (e) {
    const cached = await webllm.hasModelInCache(model, { hfEndpoint }).catch((e2) => e2.name);
    return { name: e.name, message: e.message, cached: cached === e.name ? false : cached };
  }
}"""

BAD = [  # (model, typed error the page gets)
    ("ftp://example.com/x.gguf", "ModelURLError"),
    ("hf:owner/repo", "ModelURLError"),
    ("http://[::1/x.gguf", "ModelURLError"),
    (f"hf:{REPO}/missing.gguf", "ModelNotFoundError"),
    ("hf:other/repo/x.gguf", "ModelNotFoundError"),
    ("{cdn}/cdn/nocors.gguf", "CORSError"),
    (f"hf:{REPO}/page.gguf", "NotGGUFError"),
    (f"hf:{REPO}/short.gguf", "ContentLengthError"),
    (f"hf:{REPO}/long.gguf", "ModelFormatError"),  # the browser keeps Content-Length bytes: a truncated GGUF
    (f"hf:{REPO}/tiny.gguf", "ModelFormatError"),  # GGUF magic, then a malformed header
    (f"hf:{REPO}/gone-00001-of-00002.gguf", "ModelNotFoundError"),  # shard 2 missing
]


@pytest.mark.slow
def test_bad_urls_are_typed_errors_and_nothing_is_cached(page, hub):
    got = {}
    for model, want in BAD:
        r = page.evaluate(_CREATE, [model.format(cdn=hub.cdn_url), hub.endpoint])
        assert r.get("name") == want, (model, r)
        assert not r.get("cached"), (model, "was cached")
        got[model] = r["message"]
    assert "shard 2 of 2 is missing" in got[f"hf:{REPO}/gone-00001-of-00002.gguf"]
    assert "HTML page" in got[f"hf:{REPO}/page.gguf"]
    print("\n" + "\n".join(f"{m}: {msg[:110]}" for m, msg in got.items()))
    # A server that stops sending but keeps the connection open: each attempt is dropped after stallMs.
    t0 = time.monotonic()
    r = page.evaluate(
        """async (url) => {
      const { download } = await import('/download.js');
      try { await download(url, () => {}, 2, { stallMs: 500 }); return {}; }
      catch (e) { return { name: e.name, message: e.message }; }
    }""",
        hub.cdn_url + "/cdn/stall.gguf",
    )
    assert r.get("name") == "ContentLengthError" and "stalled" in r["message"], r
    assert time.monotonic() - t0 < 2.5


@pytest.mark.slow
def test_hf_split_model_loads_through_redirects_and_answers(page, hub, prompt):
    """After the errors above: the worker still loads a model, 3 shards through 302s, one resumed."""
    n0 = len(hub.state["log"])
    r = page.evaluate(_CREATE, [f"hf:{REPO}/{NAME}", hub.endpoint])
    assert r.get("ok"), r
    done = [p for p in r["progress"] if p.get("phase") == "download"]
    assert sorted(p["shard"] for p in done) == [1, 2, 3] and all(p["shards"] == 3 for p in done)
    assert [p["state"] for p in r["progress"] if p.get("phase") == "cache"] == ["miss"] * 3 + ["stored"] * 3
    log = hub.state["log"][n0:]
    hub_paths = [p for role, p, _ in log if role == "hub"]
    assert len(hub_paths) == 4 and all(p.startswith(f"/{REPO}/resolve/main/") for p in hub_paths)
    resumed = [(p, rng) for role, p, rng in log if role == "cdn" and rng]
    assert len(resumed) == 1 and "00002-of-00003" in resumed[0][0], log  # shard 2 was cut, resumed by Range
    reply = page.evaluate("(prompt) => engine.completions.create({ prompt, max_tokens: 1, temperature: 0 })", prompt)
    assert reply["choices"][0]["text"] == " Paris"


PYTHON = """
import webllm_py
from webllm_py.errors import WebLLMError
errors = {}
for bad in ("hf:owner", "gopher://x/y.gguf", "hf:owner/repo/missing.gguf"):
    try:
        await webllm_py.create(bad, hf_endpoint=ENDPOINT)
    except WebLLMError as e:
        errors[bad] = type(e).__name__
events = []
engine = await webllm_py.create("hf:owner/repo/NAME", hf_endpoint=ENDPOINT, on_progress=events.append)
reply = await engine.completions.create(prompt=PROMPT, max_tokens=1, temperature=0)
engine.unload()
{"errors": errors, "text": reply["choices"][0]["text"],
 "cache": [(e.get("state"), e.get("shard")) for e in events if e.get("phase") == "cache"],
 "downloads": sum(e.get("phase") == "download" for e in events)}
"""


@pytest.mark.slow
def test_python_in_pyodide_loads_the_cached_model_offline(page, hub, prompt):
    """webllm_py.create("hf:...") from Python in the worker, with the Hub and CDN unreachable: the
    shards come from the cache the page filled; bad URLs are the same typed errors in Python."""
    page.evaluate("() => engine.unload()")
    for url in (hub.endpoint, hub.cdn_url):
        page.route(url + "/**", lambda route: route.abort())
    n0 = len(hub.state["log"])
    code = PYTHON.replace("ENDPOINT", repr(hub.endpoint)).replace("NAME", NAME).replace("PROMPT", repr(prompt))
    r = page.evaluate(
        """async (code) => { try { return await webllm.runPython(code); }
                         catch (e) { return { error: `${e.name}: ${e.message}\\n${e.traceback || ''}` }; } }""",
        code,
    )
    assert "error" not in r, r["error"]
    assert r["errors"] == {
        "hf:owner": "ModelURLError",
        "gopher://x/y.gguf": "ModelURLError",
        "hf:owner/repo/missing.gguf": "DownloadError",
    }  # offline: the network is refused
    assert r["cache"] == [["hit", 1], ["hit", 2], ["hit", 3]] and r["downloads"] == 0
    assert r["text"] == " Paris"
    assert hub.state["log"][n0:] == []
