"""OpenAI-shaped API over the Engine: `engine.chat.completions.create(...)` and
`engine.completions.create(...)`, returning OpenAI's response objects as plain dicts, or an async
iterator of OpenAI's chunk objects when `stream=True`. The same shapes cross to JavaScript."""

from __future__ import annotations

import asyncio
import inspect
import os
import time
import uuid
from typing import Any, AsyncIterator, Awaitable, Callable

from .engine import Engine, Interrupt, Stats, Token, check_on_progress
from .errors import DeviceLostError, ModelNotLoadedError, ModelURLError, RequestError
from .sampling import SamplingParams
from .structured import Constraint, response_format_gbnf, schema_to_gbnf
from .structured import tools as tooling


def sampling_params(
    temperature=None,
    top_p=None,
    top_k=None,
    min_p=None,
    seed=None,
    frequency_penalty=None,
    presence_penalty=None,
    repetition_penalty=None,
    logit_bias=None,
    logprobs=None,
    top_logprobs=None,
) -> SamplingParams:
    """OpenAI request fields -> SamplingParams (OpenAI's default temperature is 1.0)."""
    kw: dict[str, Any] = {}
    for name, v in (
        ("temperature", temperature),
        ("top_p", top_p),
        ("top_k", top_k),
        ("min_p", min_p),
        ("seed", seed),
        ("frequency_penalty", frequency_penalty),
        ("presence_penalty", presence_penalty),
        ("repetition_penalty", repetition_penalty),
        ("top_logprobs", top_logprobs),
    ):
        if v is not None:
            kw[name] = v
    if logit_bias:
        kw["logit_bias"] = logit_bias  # checked as it came (JSON keys are strings), then made {int: float}
    if logprobs is not None:
        kw["logprobs"] = logprobs  # a bool: SamplingParams says what an int would have meant
    kw.setdefault("temperature", 1.0)
    p = SamplingParams(**kw)
    p.logit_bias = {int(k): float(v) for k, v in p.logit_bias.items()}
    return p


_SAMPLING_FIELDS = frozenset(inspect.signature(sampling_params).parameters)


class Stream:
    """The chunks of a `stream=True` request: iterate it directly (`async for c in create(...)`), or await
    it first as OpenAI's async client is used (`s = await create(...)`: the same stream)."""

    def __init__(self, chunks: AsyncIterator[dict]) -> None:
        self._chunks = chunks
        self._reading = False  # a read (or close) is under way

    def __aiter__(self) -> "Stream":
        return self

    def __anext__(self) -> Awaitable[dict]:
        return self._one_reader(self._chunks.__anext__)

    def __await__(self):
        return _self(self).__await__()

    async def aclose(self) -> None:
        await self._one_reader(self._chunks.aclose)  # type: ignore[attr-defined]

    async def _one_reader(self, step: Callable[[], Awaitable[Any]]) -> Any:
        """One reader at a time, as webllm.js's streams: a second loop reading (or closing) while one
        read is under way got Python's bare "RuntimeError: anext(): asynchronous generator is already
        running"; now a RequestError that says so, and the first reader is left to go on."""
        if self._reading:
            raise RequestError(
                "This stream is already being read by another loop: a stream's chunks go to one reader "
                "(collect them there, or send a second request)."
            )
        self._reading = True
        try:
            return await step()
        finally:
            self._reading = False


async def _self(stream: Stream) -> Stream:
    return stream


class _Completions:
    def __init__(self, owner: "ChatEngine", chat: bool):
        self._owner, self._chat = owner, chat

    @property
    def _engine(self) -> Engine:
        return self._owner.engine  # the current one: a reload after device loss replaces it

    def create(
        self,
        *,
        messages: list[dict] | None = None,
        prompt: str | None = None,
        stream: bool = False,
        max_tokens: int | None = None,
        max_completion_tokens: int | None = None,
        stop: str | list[str] | None = None,
        stream_options: dict | None = None,
        ignore_eos: bool = False,
        tools: list | None = None,
        tool_choice: Any = None,
        response_format: dict | None = None,
        model: str | None = None,
        n: int = 1,
        interrupt: Interrupt | None = None,
        **sampling: Any,
    ):
        """Returns an awaitable of the response dict, or (stream=True) an async iterator of chunk dicts.
        Structured output: `response_format` (json_object, json_schema, grammar: see structured/) and
        `tools` / `tool_choice` (chat only: calls come back as OpenAI `tool_calls`).
        `interrupt`: a webllm_py.engine.Interrupt that stops this request alone when set, even before it
        starts (finish_reason "abort"); engine.interrupt() stops whichever request is running."""
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n != 1):  # None: OpenAI's null
            raise RequestError(f"n must be 1 (one choice is generated per request), got {n!r}.")
        if model is not None and not isinstance(model, str):  # it names nothing here, but is OpenAI's string
            raise RequestError(f"model must be a string (the loaded model answers whatever it names), got {model!r}.")
        if interrupt is not None and not isinstance(interrupt, Interrupt):
            raise RequestError(f"interrupt must be a webllm_py.engine.Interrupt, got {type(interrupt).__name__}.")
        unknown = sorted(set(sampling) - _SAMPLING_FIELDS - _IGNORED_FIELDS)
        for name in _IGNORED_FIELDS:
            sampling.pop(name, None)
        if unknown:  # at most 5 named: a string passed as the request from JS arrives as {"0": ..., "1": ...}
            more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
            raise RequestError(
                f"unknown request field(s) {', '.join(map(repr, unknown[:5]))}{more}: this runtime takes "
                f"{', '.join(sorted(_FIELDS | _SAMPLING_FIELDS))}."
            )
        if stream_options is not None and not isinstance(stream_options, dict):
            raise RequestError(
                f"stream_options must be an object such as {{include_usage: true}}, got {stream_options!r}."
            )
        stream, ignore_eos = _flag("stream", stream), _flag("ignore_eos", ignore_eos)
        if stream_options is not None and not stream:  # as OpenAI: it was dropped without a word
            raise RequestError("stream_options is taken only with stream: true (it says what the stream carries).")
        include_usage = _flag("stream_options.include_usage", (stream_options or {}).get("include_usage"))
        tok = self._engine.tokenizer
        gbnf = response_format_gbnf(response_format)
        call_tools = None  # the tools whose calls are parsed out of the output
        # The other endpoint's input would be dropped without a word (a prompt given to chat was not read).
        if self._chat and prompt is not None:
            raise RequestError("chat.completions takes messages, not prompt (a plain prompt: completions.create).")
        if not self._chat and messages is not None:
            raise RequestError("completions takes a prompt, not messages (messages: chat.completions.create).")
        if self._chat:
            if not messages:
                raise RequestError("messages must be a non-empty list of {role, content} objects.")
            messages = chat_messages(messages)
            if tools is not None:
                tooling.validate_tools(tools)
            mode, forced = tooling.tool_choice_mode(tool_choice, tools)
            prompt_tools = tools if mode != "none" else None
            if prompt_tools and not tooling.template_uses_tools(tok.chat_template):
                messages, prompt_tools = tooling.messages_with_tool_prompt(messages, tools), None
            if mode != "none":
                call_tools = tools
            if mode == "required":
                if gbnf is not None:
                    raise RequestError(
                        "response_format cannot be combined with a forced tool call "
                        "(tool_choice 'required' or a named function): drop one of them."
                    )
                gbnf = schema_to_gbnf(tooling.forced_call_schema(tools, forced))
            text = tok.apply_chat_template(messages, add_generation_prompt=True, tools=prompt_tools)
            # Like HF's apply_chat_template(tokenize=True): the template writes BOS itself where the model wants it.
            ids = tok.encode(text, add_special=False, parse_special=True)
        else:
            if tools or tool_choice is not None:
                raise RequestError("tools and tool_choice belong to chat.completions, not completions.")
            if prompt is None:
                raise RequestError("prompt is required.")
            if not isinstance(prompt, str):  # was TokenizerError "encode() takes a str", a call the user never made
                raise RequestError(
                    f"prompt must be a string, got {type(prompt).__name__}"
                    + (
                        ": OpenAI's lists (of prompts, of token ids) are not taken, send one string."
                        if isinstance(prompt, list)
                        else "."
                    )
                )
            ids = tok.encode(prompt, add_special=True, parse_special=True)
        params = sampling_params(**sampling)
        constraint = Constraint(tok, gbnf, self._engine.config.vocab_size) if gbnf is not None else None
        stats = Stats()  # this request's own: engine.last_stats may be another's by the time it is read
        gen = self._owner._generate(
            ids,
            params,
            stop=stop,  # checked by the engine (a str is one stop string)
            max_tokens=max_tokens if max_completion_tokens is None else max_completion_tokens,
            ignore_eos=ignore_eos,
            constraint=constraint,
            stats=stats,
            interrupt=interrupt,
        )
        meta = {
            "id": ("chatcmpl-" if self._chat else "cmpl-") + uuid.uuid4().hex[:24],
            "created": int(time.time()),
            "model": self._engine.checkpoint.name,
        }
        if stream:
            return Stream(self._stream(gen, meta, include_usage, params.logprobs, call_tools, stats))
        return self._collect(gen, meta, params.logprobs, call_tools, stats)

    # -- shapes -------------------------------------------------------------------------------------
    def _logprobs(self, toks: list[Token]) -> dict | None:
        tok = self._engine.tokenizer
        content = []
        for t in toks:
            if t.id < 0:
                continue
            text = tok.token_bytes(t.id).decode("utf-8", "replace")
            content.append(
                {
                    "token": text,
                    "logprob": t.logprob,
                    "bytes": list(tok.token_bytes(t.id)),
                    "top_logprobs": [
                        {
                            "token": tok.token_bytes(i).decode("utf-8", "replace"),
                            "logprob": lp,
                            "bytes": list(tok.token_bytes(i)),
                        }
                        for i, lp in t.top_logprobs
                    ],
                }
            )
        return {"content": content}

    @staticmethod
    def _usage(s: Stats) -> dict:
        return {
            "prompt_tokens": s.prompt_tokens,
            "completion_tokens": s.completion_tokens,
            "total_tokens": s.prompt_tokens + s.completion_tokens,
            "extra": {
                "prefill_tokens_per_s": round(s.prefill_tps, 2),
                "decode_tokens_per_s": round(s.decode_tps, 2),
                "cached_prompt_tokens": s.cached_prompt_tokens,
            },
        }

    def _choice_chunk(self, text: str | None, finish: str | None, logprobs: dict | None, first: bool) -> dict:
        if self._chat:
            delta: dict[str, Any] = {}
            if first:
                delta["role"] = "assistant"
            if text is not None:
                delta["content"] = text
            return {"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
        return {"index": 0, "text": text or "", "logprobs": logprobs, "finish_reason": finish}

    async def _stream(
        self,
        gen: AsyncIterator[Token],
        meta: dict,
        include_usage: bool,
        want_lp: bool,
        call_tools: list | None,
        stats: Stats,
    ):
        obj = "chat.completion.chunk" if self._chat else "text_completion"
        first = True
        # With tools, text that may still become a tool call is held back until it is clearly not one
        # (then it streams as content) or the output ends (then it is parsed into tool_calls).
        held: list[Token] | None = [] if call_tools else None
        async for t in gen:
            if held is not None:
                held.append(t)
                text = "".join(h.text for h in held)
                if tooling.may_become_call(text):
                    continue
                t, lp_toks, held = Token(-1, text), held, None
                lp = self._logprobs(lp_toks) if want_lp else None
            elif not t.text and not want_lp:
                continue  # an unfinished UTF-8 character: nothing to show yet
            else:
                lp = self._logprobs([t]) if want_lp else None
            yield {**meta, "object": obj, "choices": [self._choice_chunk(t.text, None, lp, first)]}
            first = False
        finish = stats.finish_reason
        if held:
            text = "".join(h.text for h in held)
            calls = tooling.parse_tool_calls(text, call_tools)
            lp = self._logprobs(held) if want_lp else None
            if calls:
                delta = {"role": "assistant", "content": None} if first else {}
                delta["tool_calls"] = [{"index": k, **c} for k, c in enumerate(calls)]
                yield {
                    **meta,
                    "object": obj,
                    "choices": [{"index": 0, "delta": delta, "logprobs": lp, "finish_reason": None}],
                }
                finish = "tool_calls"
            else:
                yield {**meta, "object": obj, "choices": [self._choice_chunk(text, None, lp, first)]}
            first = False
        yield {**meta, "object": obj, "choices": [self._choice_chunk(None if self._chat else "", finish, None, first)]}
        if include_usage:
            yield {**meta, "object": obj, "choices": [], "usage": self._usage(stats)}

    async def _collect(
        self, gen: AsyncIterator[Token], meta: dict, want_lp: bool, call_tools: list | None, stats: Stats
    ) -> dict:
        toks = [t async for t in gen]
        text = "".join(t.text for t in toks)
        finish = stats.finish_reason
        lp = self._logprobs(toks) if want_lp else None
        if self._chat:
            message: dict[str, Any] = {"role": "assistant", "content": text}
            calls = tooling.parse_tool_calls(text, call_tools) if call_tools else None
            if calls:
                message, finish = {"role": "assistant", "content": None, "tool_calls": calls}, "tool_calls"
            choice = {"index": 0, "message": message, "logprobs": lp, "finish_reason": finish}
            return {**meta, "object": "chat.completion", "choices": [choice], "usage": self._usage(stats)}
        return {
            **meta,
            "object": "text_completion",
            "choices": [{"index": 0, "text": text, "logprobs": lp, "finish_reason": finish}],
            "usage": self._usage(stats),
        }


# The request fields create() takes itself (the sampling ones are sampling_params()'s). `interrupt` is a
# Python object, not a field a JSON request can carry.
_FIELDS = frozenset(inspect.signature(_Completions.create).parameters) - {"self", "sampling", "interrupt"}
# OpenAI request fields that are bookkeeping for a hosted service, with nothing to do on the user's machine:
# accepted and ignored, so that requests written for OpenAI's API (its SDKs send `user`, `store`) run unchanged.
_IGNORED_FIELDS = frozenset({"user", "metadata", "store", "service_tier", "parallel_tool_calls"})


def _flag(name: str, v: Any) -> bool:
    """A yes/no request field: a bool, or None (JSON's null) for no. Truthiness took ignore_eos="no" as yes."""
    if v is None:
        return False
    if not isinstance(v, bool):
        raise RequestError(f"{name} must be true or false, got {v!r}.")
    return v


# The roles of OpenAI's chat API. "developer" is its newer name for "system", which is what the chat templates
# know (OpenAI maps it the same way for models without it); another role (a typo, "bogus") was written into the
# prompt as it stood by some templates and dropped by others, without a word.
ROLES = ("system", "developer", "user", "assistant", "tool")


def chat_messages(messages: list) -> list:
    """The messages as the chat templates take them: each an object with a known `role` ("developer" as
    "system") and a `content` that is text (None only in an assistant turn: its tool calls). OpenAI's content
    parts (`content: [{"type": "text", "text": ...}, ...]`) become one string (the text parts joined by
    newlines, as vLLM does): every chat template takes a string, not all take parts. A part of another type
    (an image, audio, a file) is a RequestError: these models read text only."""
    if not isinstance(messages, list):
        raise RequestError(f"messages must be a list of {{role, content}} objects, got {type(messages).__name__}.")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise RequestError(f"messages[{i}] must be a {{role, content}} object, got {type(m).__name__}.")
        role = m.get("role")
        if role not in ROLES:
            raise RequestError(f"messages[{i}].role must be one of {', '.join(ROLES)}, got {role!r}.")
        if role == "developer":
            m = {**m, "role": "system"}
        parts = m.get("content")
        if isinstance(parts, str) or (parts is None and role == "assistant"):  # None: a turn of tool calls
            out.append(m)
            continue
        if not isinstance(parts, list):  # was the template's own error, naming neither message nor field
            raise RequestError(
                f"messages[{i}].content must be a string or a list of text parts "
                f'({{"type": "text", "text": "..."}}), got {type(parts).__name__}.'
            )
        texts = []
        for part in parts:
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text" and not isinstance(part.get("text"), str):  # was "a part of type 'text': only text"
                raise RequestError(
                    f"messages[{i}].content has a text part whose text is {part.get('text')!r}, not a string."
                )
            if kind != "text":
                raise RequestError(
                    f"messages[{i}].content has a part of type {kind!r}: only text parts "
                    '({"type": "text", "text": "..."}) can be given to a text model.'
                )
            texts.append(part["text"])
        out.append({**m, "content": "\n".join(texts)})
    return out


class _Chat:
    def __init__(self, owner: "ChatEngine"):
        self.completions = _Completions(owner, chat=True)


class ChatEngine:
    """What `webllm_py.create()` returns: OpenAI's client shape over one loaded model.

    `reload`: an async callable that loads the same model again (create() keeps the `model` argument and
    options for it). When the GPU device is lost, the request running then fails with DeviceLostError and
    the next request first reloads: a new device, the weights uploaded again, the kernels rebuilt."""

    def __init__(self, engine: Engine, reload: Callable[[], Awaitable[Engine]] | None = None):
        self.engine = engine
        self._reload = reload
        self._reload_lock: asyncio.Lock | None = None
        self.reloads = 0  # how many times the engine was rebuilt after a device loss
        self._unloaded = False
        self.chat = _Chat(self)
        self.completions = _Completions(self, chat=False)

    async def _ready_engine(self) -> Engine:
        """The engine, reloaded first if its device was lost. One reload however many requests wait."""
        if self._unloaded:
            raise ModelNotLoadedError("This engine was unloaded: call webllm_py.create(model) to load a model again.")
        if not self.engine.lost:
            return self.engine
        if self._reload is None:
            raise DeviceLostError(
                "The GPU device was lost and this engine cannot reload its model: call webllm_py.create(model) again."
            )
        if self._reload_lock is None:
            self._reload_lock = asyncio.Lock()
        async with self._reload_lock:
            if self.engine.lost:  # another request may have reloaded while this one waited
                self.engine = await self._reload()
                self.reloads += 1
        return self.engine

    async def _generate(self, ids: list[int], params, **kw) -> AsyncIterator[Token]:
        engine = await self._ready_engine()
        async for t in engine.generate(ids, params, **kw):
            yield t

    def interrupt(self) -> None:
        """Stop the running generation (Engine.interrupt); one request alone: create(interrupt=...)."""
        self.engine.interrupt()

    def unload(self) -> None:
        self._unloaded = True  # a deliberate unload is not a device loss: no reload after it
        self.engine.unload()

    def runtime_stats(self) -> dict:
        return self.engine.runtime_stats()


# Engine.load's options (create() passes them through; `model`, `backend`, `on_progress` are its own).
_LOAD_OPTIONS = frozenset(inspect.signature(Engine.load).parameters) - {"cls", "model", "backend", "on_progress"}


async def create(model: Any = None, *, backend: str | None = None, on_progress=None, **options: Any) -> ChatEngine:
    """Load a model and return an OpenAI-style engine. `model`: a GGUF path or Hugging Face directory
    (CPython), or bytes / a JS Uint8Array / {file name: bytes} (browser). Default: SmolLM2-135M-Instruct.

    In Pyodide, `model` may also be a URL or `hf:owner/repo/path/file.gguf[@rev]` (a split GGUF by its
    first shard's name): downloaded with the runtime's JS, cached by URL once loaded (browser_models.py).
    Options for that: `hf_endpoint` (instead of https://huggingface.co), `cache=False`, `runtime_url`."""
    if model is None:
        from .default_model import default_model_path

        model = default_model_path()
    commit = None
    check_on_progress(on_progress)  # here too: in a browser a URL's download, which reports to it, comes first
    url_options = {k: options.pop(k) for k in ("hf_endpoint", "cache", "runtime_url") if k in options}
    unknown = sorted(set(options) - _LOAD_OPTIONS)
    if unknown:  # e.g. webllm.create({model, contextWindow}) from JS: named, rather than Engine.load's TypeError
        raise RequestError(
            f"unknown option(s) {', '.join(map(repr, unknown))}: create() takes "
            f"{', '.join(sorted(_LOAD_OPTIONS | {'hf_endpoint', 'cache', 'runtime_url'}))}."
        )
    if isinstance(model, str):
        from .gpu import IN_BROWSER
        from .model_url import is_model_url, resolve_model_url

        if IN_BROWSER and (is_model_url(model) or not os.path.exists(model)):
            from .browser_models import fetch_model

            model, commit = await fetch_model(model, on_progress=on_progress, **url_options)
        elif is_model_url(model):
            resolve_model_url(model, url_options.get("hf_endpoint"))  # a malformed one: ModelURLError
            raise ModelURLError(
                f"{model}: models load by URL in the browser (Pyodide); natively, download the file and pass its path."
            )

    async def reload() -> Engine:
        return await Engine.load(model, backend=backend, on_progress=on_progress, **options)

    # A `device` passed in is not reusable after its loss: a reload requests a new one.
    options_no_device = {k: v for k, v in options.items() if k != "device"}

    async def reload_new_device() -> Engine:
        return await Engine.load(model, backend=backend, on_progress=on_progress, **options_no_device)

    engine = ChatEngine(await reload(), reload=reload_new_device)
    if commit is not None:
        await commit()  # cached only now that it loaded: nothing is kept of a file the engine refused
    return engine
