"""GPU device loss in the browser: the request running when the device goes away fails with a typed
DeviceLostError (its JS `name`, a message saying what to do), and the next request on the same
webllm.js engine reloads the model (new device, weights, kernels) and answers as before.

The worker runs one request at a time, so a `runPython` sent during a stream would wait for the
stream's end. The loss is therefore armed beforehand from Python in the worker: the loaded Engine's
`generate` is wrapped so that, after it yields its first token, it calls `GPUDevice.destroy()` on the
engine's own device; the WebGPU `lost` promise then resolves with reason "destroyed", as it would
after a driver reset. The reloaded Engine is a new object, so the wrapper fires once.

Reference: the answer after the reload is compared with the greedy answer the same engine gave to the
same request before the loss (greedy decoding on the same weights and kernels is deterministic).
SwiftShader decodes slowly, so every request asks for a few tokens."""

from __future__ import annotations

import pytest

from .conftest import run_python

pytestmark = [pytest.mark.browser, pytest.mark.slow]

MODEL = "SmolLM2-135M-Instruct.Q4_1.gguf"
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
MAX_TOKENS = 3

# The worker's Session (the exec namespace does not hold it; gc finds the one with an engine).
_CHAT_ENGINE = """
import gc
from webllm_py.worker import Session
_chat = next(o for o in gc.get_objects() if isinstance(o, Session) and o.engine is not None).engine
"""

_ARM_LOSS = (
    _CHAT_ENGINE
    + """
_old = _chat.engine
_inner = _old.generate

async def _generate_then_lose_device(*args, **kw):
    n = 0
    async for tok in _inner(*args, **kw):
        yield tok
        n += 1
        if n == 1:
            _old.device.raw.destroy()  # the GPU goes away between two tokens

_old.generate = _generate_then_lose_device
_chat.reloads
"""
)

_PROBE = (
    _CHAT_ENGINE
    + """
{"reloads": _chat.reloads, "old_lost": _old.lost, "new_engine": _chat.engine is not _old,
 "new_device": _chat.engine.device is not _old.device, "new_lost": _chat.engine.lost}
"""
)


def _text(resp):
    return resp["choices"][0]["message"]["content"]


def test_device_lost_mid_stream_then_next_request_reloads(webllm_page):
    page = webllm_page
    ask = {"messages": QUESTION, "max_tokens": MAX_TOKENS, "temperature": 0}
    r = page.evaluate(
        """async ([model, ask]) => {
        try {
            window.lostEngine = await webllm.create({ model });
            return { before: await window.lostEngine.chat.completions.create(ask) };
        } catch (e) { return { error: `${e.name}: ${e.message}\\n${e.traceback || ''}` }; }
    }""",
        [MODEL, ask],
    )
    try:
        assert "error" not in r, r.get("error")
        before = _text(r["before"])
        assert before

        assert run_python(page, _ARM_LOSS) == 0

        s = page.evaluate(
            """async (ask) => {
            const chunks = [];
            try {
                for await (const c of await window.lostEngine.chat.completions.create({ ...ask, stream: true })) chunks.push(c);
                return { chunks };
            } catch (e) {
                return { chunks, error: { name: e.name, message: e.message, hint: webllm.errorHint(e) } };
            }
        }""",
            ask,
        )
        assert "error" in s, f"the stream ended normally after the device was destroyed: {s['chunks']}"
        err = s["error"]
        assert err["name"] == "DeviceLostError", err
        assert "lost" in err["message"] and "reload" in err["message"].lower(), err["message"]  # says what to do
        assert err["hint"], "webllm.errorHint gives no advice for DeviceLostError"
        streamed = "".join(
            (c["choices"][0].get("delta") or {}).get("content") or "" for c in s["chunks"] if c.get("choices")
        )
        assert streamed and before.startswith(streamed), (streamed, before)  # the loss came mid-stream

        after = page.evaluate("(ask) => window.lostEngine.chat.completions.create(ask)", ask)
        assert _text(after) == before
        assert after["usage"]["completion_tokens"] == r["before"]["usage"]["completion_tokens"]

        probe = run_python(page, _PROBE)
        assert probe == {"reloads": 1, "old_lost": True, "new_engine": True, "new_device": True, "new_lost": False}
        stats = page.evaluate("() => window.lostEngine.runtimeStats()")
        # The stats are the reloaded engine's, of the request it answered.
        assert stats["backend"] == "browser" and stats["completion_tokens"] == after["usage"]["completion_tokens"]
    finally:
        page.evaluate("() => window.lostEngine && window.lostEngine.unload()")
