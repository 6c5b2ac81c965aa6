"""The browser and the native runtime give the same greedy tokens: SmolLM2-135M-Instruct answering
"What is the capital of France?" in Pyodide on WebGPU (SwiftShader) and on CPython with wgpu
(lavapipe). Same Python code, two GPU backends and two shader compilers: token ids must agree.

In the browser the engine is made in the worker's exec namespace from the model the dev server
serves (test_browser_chat.py unloads its engine, so nothing is loaded twice at once). SwiftShader
decodes at ~0.1 tok/s, so the answer is cut at 4 tokens (the first token comes from the prefill, the
other three from the decode path); that the full answer is "...Paris." is test_model_smollm2.py's job.
"""

from __future__ import annotations

import asyncio
import threading

import pytest

from webllm_py.default_model import DEFAULT_MODEL_FILE, default_model_path

from .conftest import run_python

pytestmark = [pytest.mark.browser, pytest.mark.slow]

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
N_TOKENS = 4
PREFILL_CHUNK = 64

BROWSER_RUN = f"""
import js
from webllm_py.engine import Engine
from webllm_py.formats.source import JSBufferSource
from webllm_py.sampling import SamplingParams

resp = await js.fetch("/models/{DEFAULT_MODEL_FILE}")
model_bytes = js.Uint8Array.new(await resp.arrayBuffer())
parity_engine = await Engine.load(JSBufferSource(model_bytes), context_window=256, prefill_chunk={PREFILL_CHUNK})
try:
    tok = parity_engine.tokenizer
    prompt_ids = tok.encode(tok.apply_chat_template({QUESTION!r}), add_special=False)
    _, token_ids = await parity_engine.complete(prompt_ids, params=SamplingParams(temperature=0.0),
                                                max_tokens={N_TOKENS}, ignore_eos=True)
    result = {{"prompt": prompt_ids, "tokens": token_ids, "adapter": parity_engine.runtime_stats()["adapter"]}}
finally:
    parity_engine.unload()
    del model_bytes, parity_engine
result
"""


def native_run(request) -> dict:
    """The same run on the native `device` fixture. Playwright's sync API keeps an event loop running
    on the main thread while the browser fixtures live, so asyncio (and the fixture's own set-up)
    runs on a thread of its own."""
    out: dict = {}

    def work():
        try:
            from webllm_py.engine import Engine
            from webllm_py.sampling import SamplingParams

            device = request.getfixturevalue("device")

            async def go():
                engine = await Engine.load(
                    default_model_path(), device=device, context_window=256, prefill_chunk=PREFILL_CHUNK
                )
                try:
                    tok = engine.tokenizer
                    ids = tok.encode(tok.apply_chat_template(QUESTION), add_special=False)
                    _, toks = await engine.complete(
                        ids, params=SamplingParams(temperature=0.0), max_tokens=N_TOKENS, ignore_eos=True
                    )
                    return {"prompt": ids, "tokens": toks}
                finally:
                    engine.reset(0)

            out["value"] = asyncio.run(go())
        except BaseException as e:  # re-raised on the test's thread
            out["error"] = e

    t = threading.Thread(target=work)
    t.start()
    t.join()
    if "error" in out:
        raise out["error"]
    return out["value"]


def test_browser_greedy_tokens_equal_native(request, webllm_page):
    native = native_run(request)
    assert len(native["tokens"]) == N_TOKENS

    browser = run_python(webllm_page, BROWSER_RUN)
    assert "swiftshader" in browser["adapter"].lower()
    assert browser["prompt"] == native["prompt"]
    assert browser["tokens"] == native["tokens"], (browser["tokens"], native["tokens"])
    assert webllm_page.errors == []
