"""Gemma-3-270M (real weights, 253 MB GGUF from scripts/fetch_gemma3.sh) end to end in the browser:
webllm.js -> worker download -> the engine in Pyodide -> WebGPU on SwiftShader.

The file is the pretrained model (no chat template, not instruction-tuned), so the question goes
through completions.create as a plain prompt. Reference: transformers running the same GGUF on CPU
answers it greedily with " Paris\\nQuestion: What is ..." (its first token is " Paris")."""

from __future__ import annotations

from pathlib import Path

import pytest

from .conftest import open_page

pytestmark = [pytest.mark.browser, pytest.mark.slow]

MODEL = Path(__file__).resolve().parents[2] / "build" / "models" / "gemma-3-270m-q4_k_m.gguf"
PROMPT = "Question: What is the capital of France?\nAnswer:"
# Download + upload of 253 MB and kernels compiled by SwiftShader, then 2 tokens over a 262k vocab.
TIMEOUT_MS = 480_000


@pytest.fixture(scope="module")
def gemma_server():
    """A dev server of its own that serves the Gemma file (the package's server serves the default
    model only: the chat page's model list is tested as such)."""
    from webllm_py import serve

    if not MODEL.is_file():
        pytest.fail(f"{MODEL} is missing: run scripts/fetch_gemma3.sh (scripts/setup.sh calls it)")
    srv = serve.start_in_thread(port=0, site=serve.build_site([MODEL]))
    yield serve.server_url(srv)
    srv.shutdown()
    srv.server_close()


def test_gemma3_completes_paris(chromium, gemma_server):
    page = open_page(chromium, gemma_server + "script-tag.html")
    page.set_default_timeout(TIMEOUT_MS)
    try:
        page.evaluate("() => webllm.ready()")
        r = page.evaluate(
            """async ([model, prompt]) => {
            try {
                const t0 = performance.now();
                const marks = {};  // when each download phase / load stage was first and last seen
                const onProgress = (p) => {
                    const k = p.phase || p.stage, t = (performance.now() - t0) / 1000;
                    marks[k] = [marks[k] ? marks[k][0] : t, t];
                };
                const engine = await webllm.create({ model, context_window: 256, onProgress });
                const t1 = performance.now();
                const out = await engine.completions.create({ prompt, max_tokens: 2, temperature: 0 });
                const stats = await engine.runtimeStats();
                await engine.unload();
                return { out, stats, marks, load_s: (t1 - t0) / 1000, generate_s: (performance.now() - t1) / 1000 };
            } catch (e) { return { error: `${e.name}: ${e.message}\\n${e.traceback || ''}` }; }
        }""",
            [MODEL.name, PROMPT],
        )
    finally:
        page.close()
    assert "error" not in r, r.get("error")
    print(f"\nload {r['load_s']:.1f} s {r['marks']}, 2 tokens {r['generate_s']:.1f} s, {r['stats']}")
    text = r["out"]["choices"][0]["text"]
    assert text.startswith(" Paris"), text
    assert r["out"]["usage"]["completion_tokens"] == 2
