"""The Python side of the worker protocol (`static/protocol.js` is the definition; this mirrors it).

`static/worker.js` owns the transport (messages, the queue, downloads) and hands each queued request
to `Session.handle`, which returns the final response as JSON text; intermediate `progress` and
`chunk` responses go out through `emit(kind, payload_json)`. JSON text in both directions keeps
JS proxies from leaking across the FFI. Generation itself is the engine's job
(`webllm_py.create`), so this module stays thin.

It is plain Python (no Pyodide imports), so it also runs, and is tested, on CPython.
"""

from __future__ import annotations

import ast
import asyncio
import base64
import inspect
import json
import signal
import traceback
from typing import Any, Callable

from .errors import AbortedError, ModelNotLoadedError, RequestError

# Mirror of PROTOCOL in static/protocol.js.
REQUESTS = ("init", "exec", "load", "chat", "completion", "abort", "unload", "stats")
RESPONSES = ("progress", "chunk", "result", "error")
ENGINE_KINDS = ("load", "chat", "completion", "unload", "stats")
GENERATE_KINDS = ("chat", "completion")  # the requests an `interrupt` abort ends early

Emit = Callable[[str, str], Any]


# What a model load imports, imported ahead while static/worker.js makes its start-up snapshot (a
# Pyodide memory snapshot kept in the browser's Cache Storage): a worker started from the snapshot
# has them in memory already (~1 s of imports in Pyodide, measured). Nothing here may hold a JS
# object (Pyodide cannot snapshot those), so the browser GPU backend (`import js`) is not listed.
PRELOAD = (
    "webllm_py.api",
    "webllm_py.engine",
    "webllm_py.checkpoint",
    "webllm_py.models",
    "webllm_py.formats.gguf",
    "webllm_py.formats.safetensors",
    "webllm_py.formats.source",
    "webllm_py.tokenizer",
    "webllm_py.structured",
    "webllm_py.sampling",
    "webllm_py.kernels",
)


def preload() -> list[str]:
    """Import PRELOAD and compile every kernel template (Jinja's parse, not a render); returns the
    templates compiled."""
    import importlib

    from . import kernels

    # Templates first: compiling one holds its lexed tokens, generated source and AST for a moment (~5 MB for
    # the largest), and a wasm heap never shrinks: over the imports' ~5 MB that peak made the snapshot-making
    # instance grow past Pyodide's initial 30 MiB. Such a snapshot restores (static/worker.js grows the fresh
    # instance first: restoringFactory), but it costs its size in Cache Storage and in the restore's copy.
    names = kernels.compile_templates()
    for name in PRELOAD:
        importlib.import_module(name)
    return names


class ResultNotSerializable(Exception):
    """An `exec` request's value cannot be sent back as JSON."""


def _jsonable(v: Any) -> Any:
    # bytes travel as {"$bytes": base64}: exec results are how tests read GPU buffers.
    if isinstance(v, (bytes, bytearray, memoryview)):
        return {"$bytes": base64.b64encode(bytes(v)).decode()}
    if isinstance(v, (set, frozenset)):
        return sorted(v)
    if hasattr(v, "__dataclass_fields__"):
        return {k: getattr(v, k) for k in v.__dataclass_fields__}
    raise ResultNotSerializable(
        f"the result ({type(v).__name__}) is not JSON-serialisable: return numbers, strings, lists, dicts or bytes"
    )


def to_json(v: Any) -> str:
    # allow_nan=False: NaN / Infinity are not JSON, and the worker's JSON.parse would fail on them.
    return json.dumps(v, default=_jsonable, allow_nan=False)


def error_payload(e: BaseException) -> dict:
    if isinstance(e, (KeyboardInterrupt, asyncio.CancelledError)):
        return {"name": "AbortedError", "message": "The request was aborted by the caller."}
    return {
        "name": type(e).__name__,
        "message": str(e),
        "traceback": "".join(traceback.format_exception(type(e), e, e.__traceback__)),
    }


async def run_source(code: str, namespace: dict) -> Any:
    """exec `code` in `namespace` with top-level await; return the value of a trailing expression."""
    flags = ast.PyCF_ALLOW_TOP_LEVEL_AWAIT
    tree = ast.parse(code, "<exec>", "exec")
    last = None
    if tree.body and isinstance(tree.body[-1], ast.Expr):
        last = ast.Expression(tree.body.pop().value)
    r = eval(compile(tree, "<exec>", "exec", flags=flags), namespace)
    if inspect.isawaitable(r):
        await r
    if last is None:
        return None
    v = eval(compile(last, "<exec>", "eval", flags=flags), namespace)
    return await v if inspect.isawaitable(v) else v


class Session:
    """One worker's state: the exec namespace, the engine, and the request being run."""

    def __init__(self, cancelled: Callable[[int], bool] | None = None) -> None:
        self.namespace: dict = {"__name__": "__console__"}
        # `cancelled(id)`: whether the page cancelled request `id` through shared memory (worker.js passes
        # it where the page is cross-origin isolated; static/protocol.js CONTROL). Then the page stops a
        # busy request by raising SIGINT in Python through Pyodide's interrupt buffer, and _on_sigint
        # decides where that may land.
        self._cancelled = cancelled
        self.current: int | None = None  # the request being handled (worker.js runs one at a time)
        self._early_abort: tuple[int, str] | None = None  # an abort that came before its request's handle ran
        if cancelled is not None:
            signal.signal(signal.SIGINT, self._on_sigint)
        self.engine = None
        self.model: str | None = None
        # The id of the `load` request that made self.engine. The worker holds one model: a page's
        # engine sends the id of its own load as `_load` with each request, and fails typed when a later
        # load replaced it (its request would run on the other model; its unload would free that one).
        self.loaded_by: int | None = None
        # id -> (kind, task, the request's Interrupt for a chat or completion, else None)
        self._running: dict[int, tuple[str, asyncio.Future, Any]] = {}

    # -- capabilities -----------------------------------------------------------------------------
    # -- requests ---------------------------------------------------------------------------------
    async def handle(self, kind: str, id: int, payload_json: str, emit: Emit, data: Any = None) -> str:
        """Run one request; return the final response {kind: result|error, id, payload} as JSON."""
        id = int(id)
        try:
            if kind not in REQUESTS or kind in ("init", "abort"):
                raise ValueError(f"request kind {kind!r} is not handled by Python (known: {', '.join(REQUESTS)})")
            payload = json.loads(payload_json or "{}")
            if kind in ENGINE_KINDS and kind != "load" and isinstance(payload, dict):
                load = payload.pop("_load", None)
                if kind == "unload" and load not in (None, self.loaded_by):
                    return to_json({"kind": "result", "id": id, "payload": {}})  # its model is gone already
                self._check_engine(load)
            self.current = id
            run = getattr(self, "_" + kind)
            if kind in GENERATE_KINDS:
                # Made before its coroutine runs: an `interrupt` abort sets it whenever it comes, and the
                # engine checks it as the generation starts (see engine.Interrupt).
                from .engine import Interrupt

                interrupt = Interrupt()
                task = asyncio.ensure_future(run(payload, emit, interrupt))
            else:
                interrupt = None
                task = asyncio.ensure_future(run(payload, emit, data))
            self._running[id] = (kind, task, interrupt)
            if self._early_abort is not None and self._early_abort[0] == id:
                self.abort(*self._early_abort)  # it came before this coroutine ran (see abort)
            self._early_abort = None
            try:
                value = await task
            finally:
                self._running.pop(id, None)
            if kind == "load":
                self.loaded_by = id
            return to_json({"kind": "result", "id": id, "payload": value})
        except BaseException as e:  # noqa: B036 - KeyboardInterrupt is how a busy exec is aborted
            return json.dumps({"kind": "error", "id": id, "payload": error_payload(e)})

    def _on_sigint(self, signum: int, frame: Any) -> None:
        """The page raised SIGINT to stop request `self.current`. A KeyboardInterrupt may land only inside
        that request's own body: an `exec`'s code (the busy loop that no message can reach) or a `load`
        (parsing and upload, which a cancel should not wait out). Anywhere else - asyncio's machinery
        between tasks, `abort` itself, an interrupt meant for a request that ended meanwhile - it escaped
        into JS as an untyped PythonError; there it is ignored: the abort message the page sent with it
        cancels the request at its next await, and _exec checks `cancelled` before running any code."""
        target = self.current
        if target is None or self._cancelled is None or not self._cancelled(target):
            return
        bodies = (Session._exec.__code__, Session._load.__code__)
        f = frame
        while f is not None:
            if f.f_code in bodies:
                raise KeyboardInterrupt
            f = f.f_back

    def abort(self, target: int, mode: str = "cancel", handed: bool = False) -> bool:
        """Stop request `target` if it is running. `interrupt` ends a chat or completion's generation (the
        request returns what it has, none if it had not started); `cancel` cancels it (it fails with
        AbortedError), as `interrupt` does any other request.
        `handed`: the caller runs `target` and Python has not returned it (worker.js's running request), so a
        target with no task yet is one whose handle has not started (or not been called): the abort waits
        for it there."""
        entry = self._running.get(int(target))
        if entry is None:
            if not handed:
                return False
            # JS is running it but Python has not started it (handle not yet called, or its coroutine not
            # yet run): dropped here, the abort was lost and the request ran in full (a busy loop: forever).
            # handle applies it as it starts.
            self._early_abort = (int(target), mode)
            return True
        kind, task, interrupt = entry
        if mode == "interrupt" and interrupt is not None:
            interrupt.set()  # this request's own: engine.interrupt() would stop whichever one is running
        else:
            task.cancel()
        return True

    async def _exec(self, payload: dict, emit: Emit, data: Any) -> Any:
        if self._cancelled is not None and self.current is not None and self._cancelled(self.current):
            # SIGINT came before this code ran (and was ignored there): do not start a loop it cannot stop.
            raise AbortedError("The request was aborted before it started.")
        try:
            v = await run_source(payload["code"], self.namespace)
        except KeyboardInterrupt:
            # Raised by Pyodide's interrupt buffer. Turned into an ordinary exception here: asyncio
            # re-raises KeyboardInterrupt out of the event loop, i.e. into JS, past `handle`.
            raise AbortedError("The Python code was interrupted (aborted by the caller).") from None
        try:
            to_json(v)  # fail here, typed, rather than in handle's final dump
        except ValueError as e:  # a float NaN / Infinity (json's "Out of range float values")
            raise ResultNotSerializable(
                f"the result holds a float NaN or Infinity, which JSON cannot carry ({e}): return None or a string for them"
            ) from None
        return v

    def _check_engine(self, load: Any) -> None:
        if load is None or load == self.loaded_by:
            return
        now = f"a later webllm.create loaded {self.model}" if self.engine is not None else "no model is loaded now"
        raise ModelNotLoadedError(
            f"This engine's model was replaced ({now}): one worker holds one model. Call webllm.create({{model}}) again."
        )

    def _need_engine(self):
        if self.engine is None:
            raise ModelNotLoadedError("No model is loaded: call webllm.create({model}) (a `load` request) first.")
        return self.engine

    async def _load(self, payload: dict, emit: Emit, data: Any) -> dict:
        from webllm_py import create

        if data is not None:  # the model's bytes, downloaded by worker.js: a JS Uint8Array, or an array
            from webllm_py.formats.source import JSBufferSource  # of them (the shards of a split GGUF)

            source = JSBufferSource(data) if hasattr(data, "subarray") else [JSBufferSource(p) for p in data]
        else:
            source = payload["model"]  # natively: a path
        if self.engine is not None:
            self.engine.unload()
            self.engine = None
        self.loaded_by = None
        self.model = payload.get("model")
        options = payload.get("options") or {}
        engine = create(source, on_progress=lambda d: emit("progress", to_json(d)), **options)
        self.engine = await engine if inspect.isawaitable(engine) else engine
        return {"model": payload.get("model")}

    async def _generate(self, api, payload: dict, emit: Emit, interrupt: Any) -> Any:
        stream = bool(payload.pop("stream", False))
        if "interrupt" in payload:  # create()'s Python-only argument: the request's own is passed below
            raise RequestError("unknown request field 'interrupt': stop a request with an `interrupt` abort.")
        r = api.create(stream=stream, interrupt=interrupt, **payload)
        if stream:
            if inspect.isawaitable(r) and not hasattr(r, "__aiter__"):
                r = await r
            async for chunk in r:
                emit("chunk", to_json(chunk))
            return {"done": True}
        return await r if inspect.isawaitable(r) else r

    async def _chat(self, payload: dict, emit: Emit, interrupt: Any) -> Any:
        return await self._generate(self._need_engine().chat.completions, payload, emit, interrupt)

    async def _completion(self, payload: dict, emit: Emit, interrupt: Any) -> Any:
        return await self._generate(self._need_engine().completions, payload, emit, interrupt)

    async def _unload(self, payload: dict, emit: Emit, data: Any) -> dict:
        if self.engine is not None:
            r = self.engine.unload()
            if inspect.isawaitable(r):
                await r
            self.engine = None
        self.loaded_by = None
        return {}

    async def _stats(self, payload: dict, emit: Emit, data: Any) -> dict:
        return self._need_engine().runtime_stats()
