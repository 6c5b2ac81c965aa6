"""webllm_py.worker (the Python side of the protocol) is plain Python: check it on CPython too."""

from __future__ import annotations

import asyncio
import json
import signal
import sys

from concurrent.futures import ThreadPoolExecutor

from webllm_py import worker


def run(coro):
    """asyncio.run on a thread of its own: the browser tests' Playwright (sync API) keeps an event
    loop running on the main thread while this package's fixtures are alive."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


def call(session, kind, payload, id=1, emit=None):
    out = []
    text = run(session.handle(kind, id, json.dumps(payload), emit or (lambda k, p: out.append((k, json.loads(p))))))
    return json.loads(text), out


def test_exec_top_level_await_and_last_expression():
    s = worker.Session()
    msg, _ = call(s, "exec", {"code": "import asyncio\nawait asyncio.sleep(0)\nx = 20\nx + 1"})
    assert msg == {"kind": "result", "id": 1, "payload": 21}
    msg, _ = call(s, "exec", {"code": "b'\\x00\\xff'"}, id=2)
    assert msg["payload"] == {"$bytes": "AP8="}
    msg, _ = call(s, "exec", {"code": "y = 1"}, id=3)
    assert msg["payload"] is None


def test_errors_are_typed():
    s = worker.Session()
    msg, _ = call(s, "exec", {"code": "raise KeyError('k')"})
    assert msg["kind"] == "error" and msg["payload"]["name"] == "KeyError"
    msg, _ = call(s, "exec", {"code": "object()"})
    assert msg["payload"]["name"] == "ResultNotSerializable"
    msg, _ = call(s, "teleport", {})
    assert msg["kind"] == "error" and msg["payload"]["name"] == "ValueError"


def test_abort_cancels_the_running_request():
    s = worker.Session()

    async def scenario():
        t = asyncio.ensure_future(
            s.handle("exec", 5, json.dumps({"code": "import asyncio\nawait asyncio.sleep(60)"}), lambda k, p: None)
        )
        await asyncio.sleep(0.05)
        assert s.abort(5) is True
        assert s.abort(6) is False  # not running
        return json.loads(await asyncio.wait_for(t, 5))

    msg = run(scenario())
    assert msg["kind"] == "error" and msg["payload"]["name"] == "AbortedError"


def test_an_abort_before_its_handle_ran_is_applied_when_it_starts():
    """worker.js hands a request to handle() and may read its abort message before Python ran that
    coroutine: the abort found no task and was dropped, so the request ran in full (a busy loop forever)."""
    s = worker.Session()

    async def scenario():
        coro = s.handle("exec", 7, json.dumps({"code": "ran = True\nwhile True: pass"}), lambda k, p: None)
        assert s.abort(7, "cancel", handed=True) is True  # before the coroutine's first step
        return json.loads(await asyncio.wait_for(coro, 5))

    msg = run(scenario())
    assert msg["kind"] == "error" and msg["payload"]["name"] == "AbortedError"
    assert "ran" not in s.namespace


def test_sigint_lands_only_in_the_cancelled_requests_own_body():
    """The page raises SIGINT (Pyodide's interrupt buffer) to stop a busy exec. It may arrive while Python
    runs something else (asyncio between tasks, `abort`, or after the request ended): a KeyboardInterrupt
    there escaped into JS untyped. Only the cancelled request's own code gets it."""
    cancelled: set[int] = set()
    old = signal.getsignal(signal.SIGINT)
    try:
        s = worker.Session(cancelled.__contains__)
        assert signal.getsignal(signal.SIGINT) == s._on_sigint
        s.current = 3
        s._on_sigint(signal.SIGINT, sys._getframe())  # not cancelled: ignored
        cancelled.add(3)
        s._on_sigint(signal.SIGINT, sys._getframe())  # cancelled, but outside its exec: ignored

        # The exec's code is where a busy loop runs: there the interrupt raises (the hook stands in for
        # the page cancelling it and the interrupt arriving mid-loop).
        def interrupted_here(cancel: int) -> None:
            cancelled.add(cancel)
            s._on_sigint(signal.SIGINT, sys._getframe())

        s.namespace["interrupted_here"] = interrupted_here
        code = "interrupted_here({})\nafter = True"
        msg, _ = call(s, "exec", {"code": code.format(99)}, id=4)  # another request's cancel: runs on
        assert msg == {"kind": "result", "id": 4, "payload": None} and s.namespace.pop("after") is True
        msg, _ = call(s, "exec", {"code": code.format(5)}, id=5)
        assert msg["kind"] == "error" and msg["payload"]["name"] == "AbortedError", msg
        assert "after" not in s.namespace
        msg, _ = call(s, "exec", {"code": "after = True"}, id=6)
        assert msg["kind"] == "result" and s.namespace["after"] is True  # usable afterwards
        cancelled.add(7)  # cancelled before its code ran (the interrupt was ignored elsewhere): never runs
        msg, _ = call(s, "exec", {"code": "ran = True"}, id=7)
        assert msg["payload"]["name"] == "AbortedError" and "ran" not in s.namespace
    finally:
        signal.signal(signal.SIGINT, old)


def test_protocol_mirror_covers_the_engine_kinds():
    assert set(worker.ENGINE_KINDS) <= set(worker.REQUESTS)
    assert set(worker.REQUESTS) == {"init", "exec", "load", "chat", "completion", "abort", "unload", "stats"}
    assert set(worker.RESPONSES) == {"progress", "chunk", "result", "error"}


def test_an_engine_whose_model_a_later_load_replaced_is_refused():
    """One worker holds one model. A page's engine sends its load's id as `_load`: after a later load its
    requests ran on the other model, and its unload freed that one; now they fail typed and touch nothing."""

    class Engine:
        unloaded = False

        def runtime_stats(self):
            return {"ok": 1}

        def unload(self):
            self.unloaded = True

    s = worker.Session()
    s.engine, s.loaded_by, s.model = Engine(), 7, "b.gguf"
    assert call(s, "stats", {"_load": 7})[0]["payload"] == {"ok": 1}
    assert call(s, "stats", {})[0]["payload"] == {"ok": 1}  # no `_load`: a plain protocol client
    for kind in ("stats", "chat", "completion"):
        msg, _ = call(s, kind, {"_load": 3, "messages": [], "prompt": ""})
        assert msg["kind"] == "error" and msg["payload"]["name"] == "ModelNotLoadedError", msg
        assert "b.gguf" in msg["payload"]["message"]
    # Its unload frees what it holds, i.e. nothing: the other model stays (a page's teardown may call it).
    assert call(s, "unload", {"_load": 3})[0] == {"kind": "result", "id": 1, "payload": {}}
    assert not s.engine.unloaded and s.loaded_by == 7
    assert call(s, "unload", {"_load": 7})[0]["kind"] == "result" and s.loaded_by is None
    msg, _ = call(s, "stats", {"_load": 7})
    assert msg["payload"]["name"] == "ModelNotLoadedError" and "no model is loaded" in msg["payload"]["message"]
