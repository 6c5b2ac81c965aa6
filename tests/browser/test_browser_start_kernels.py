"""Start-up kernels (static/worker.js, webllm_py/gpu/browser.py): a returning visit compiles the kernels
its model's first token needed last time while Pyodide starts, and Python takes them over. The answer
must be the one the page got without them (greedy), and a record made for another device request must
be ignored, not used."""

from __future__ import annotations

import pytest

from .conftest import open_page

pytestmark = [pytest.mark.browser, pytest.mark.slow]

# The stored record's device request made unlike the one Python makes (a different power preference).
_TAMPER = """async () => {
  const cache = await caches.open("webllm-start-kernels");
  const keys = await cache.keys();
  for (const req of keys) {
    const rec = await (await cache.match(req)).json();
    rec.request.powerPreference = "low-power";
    await cache.put(req, new Response(JSON.stringify(rec)));
  }
  return keys.length;
}"""


def test_returning_visit_takes_start_kernels_and_answers_alike(chromium, server_url):
    page = open_page(chromium, server_url + "bench.html")
    try:
        first = page.evaluate("() => runCachedStart({ chatTokens: 6 })")  # stores the record
        page.goto(server_url + "bench.html")
        again = page.evaluate("() => runCachedStart({ chatTokens: 6 })")
        assert page.evaluate(_TAMPER) == 1
        page.goto(server_url + "bench.html")
        other = page.evaluate("() => runCachedStart({ chatTokens: 6 })")
    finally:
        page.close()
    assert first["chat_stats"]["kernels_ahead"] == 0
    # SmolLM2's first token: embedding, norms, rope, KV write, prefill attention and matmuls, GLU, the
    # head and sampling
    assert again["chat_stats"]["kernels_ahead"] >= 10, again["chat_stats"]
    assert other["chat_stats"]["kernels_ahead"] == 0  # its device was not the one Python asks for
    assert first["chat_text"] and again["chat_text"] == first["chat_text"] == other["chat_text"]
    assert page.errors == []
