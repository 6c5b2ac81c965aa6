"""Fixtures for the browser tests: the dev server on a free port (in-process, a thread), headless
Chromium with WebGPU (SwiftShader) through plain Playwright, one page that loaded /webllm.js, and
`run_python(page, code)`, which goes page -> webllm.js -> worker -> Pyodide and back.

The fixtures are package-scoped: Pyodide starts once for all the browser tests (3-10 s), and the
Playwright driver is gone before the rest of the suite runs. While it is alive its sync API keeps an
event loop running on the main thread: tests in this package must not call asyncio.run() there
(test_worker_session.py runs its coroutines on a thread of their own).
"""

from __future__ import annotations

import base64
import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _load_config():
    spec = importlib.util.spec_from_file_location("webllm_playwright_config", ROOT / "playwright.config.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


CONFIG = _load_config()


class BrowserPythonError(Exception):
    """A request failed in the worker; `name` is the typed error's name (the Python class)."""

    def __init__(self, name: str, message: str, traceback: str | None = None):
        super().__init__(f"{name}: {message}" + (f"\n{traceback}" if traceback else ""))
        self.name, self.message, self.traceback = name, message, traceback


def decode(v):
    """Undo worker.py's JSON encoding of bytes ({"$bytes": base64})."""
    if isinstance(v, dict):
        if set(v) == {"$bytes"}:
            return base64.b64decode(v["$bytes"])
        return {k: decode(x) for k, x in v.items()}
    if isinstance(v, list):
        return [decode(x) for x in v]
    return v


# Resolves to {ok: value} or {error: {name, message, traceback}} so errors cross into Python typed.
_RUN = """([code, timeout]) => {
  const ctl = timeout ? AbortSignal.timeout(timeout) : undefined;
  return webllm.runPython(code, { signal: ctl }).then(
    (ok) => ({ ok }),
    (e) => ({ error: { name: e.name, message: e.message, traceback: e.traceback || null } }));
}"""


def run_python(page, code: str, timeout_ms: int | None = None):
    """Run `code` in Pyodide in the page's worker; return its last expression's value (bytes decoded).
    Raise BrowserPythonError(name, message) if the worker answers with an `error`."""
    r = page.evaluate(_RUN, [code, timeout_ms])
    if "error" in r:
        e = r["error"]
        raise BrowserPythonError(e["name"], e["message"], e.get("traceback"))
    return decode(r["ok"])


@pytest.fixture(scope="package")
def server_url():
    from webllm_py import serve

    srv = serve.start_in_thread(port=0)
    yield serve.server_url(srv)
    srv.shutdown()
    srv.server_close()


@pytest.fixture(scope="package")
def chromium():
    from playwright.sync_api import sync_playwright

    if not Path(CONFIG.CHROMIUM).exists():
        pytest.fail(f"Chromium not found at {CONFIG.CHROMIUM}: run ./scripts/setup.sh (or set WEBLLM_CHROMIUM)")
    pw = sync_playwright().start()
    browser = pw.chromium.launch(executable_path=CONFIG.CHROMIUM, args=CONFIG.LAUNCH_ARGS, headless=CONFIG.HEADLESS)
    yield browser
    browser.close()
    pw.stop()


def open_page(target, url: str, console: bool = True):
    """A new page of `target` (the browser, or a context of its own) at `url`, with its uncaught errors, and
    with `console` its console errors too, collected in page.errors."""
    page = target.new_page()
    page.set_default_timeout(CONFIG.TIMEOUT_MS)
    page.errors = []
    page.on("pageerror", lambda e: page.errors.append(str(e)))
    if console:
        page.on("console", lambda m: m.type == "error" and page.errors.append(m.text))
    page.goto(url)
    return page


@pytest.fixture(scope="package")
def webllm_page(chromium, server_url):
    """static/script-tag.html (only `<script src="/webllm.js">`), with the worker ready."""
    page = open_page(chromium, server_url + "script-tag.html")
    page.info = page.evaluate("() => webllm.ready()")
    yield page
    page.close()
