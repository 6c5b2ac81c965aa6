"""Models by URL from Python in Pyodide: `await webllm_py.create("hf:owner/repo/file.gguf")`.

Python does not download anything itself: it calls the runtime's JavaScript (static/download.js,
the code webllm.create runs), so resolution, redirects, Range resumes, shards, sha256 checks and the
model cache are one implementation, and a notebook on the chat page's origin finds the models the
page cached (the Cache API storage is per origin). The bytes stay in JS Uint8Arrays (JSBufferSource):
tensor data goes from them to the GPU without entering Python's heap.

Where download.js comes from (the base URL rule): the `runtime_url` argument if given; else, inside
webllm.js's worker, the functions that worker exposes (`webllmFetchModelFiles`); else
`globalThis.webllmBaseURL` if a page or kernel set it; else the root of the current origin
(`/download.js`, where `python -m webllm_py serve` and the static build put it).
"""

from __future__ import annotations

from typing import Any, Callable

from . import errors
from .errors import DownloadError, WebLLMError
from .formats.source import JSBufferSource


def _typed(e: BaseException) -> BaseException:
    """A JS error from download.js -> the webllm_py error of the same name."""
    name, message = getattr(e, "name", ""), getattr(e, "message", str(e))
    cls = getattr(errors, name, None)
    if isinstance(cls, type) and issubclass(cls, WebLLMError):
        return cls(message)
    return DownloadError(f"{name or type(e).__name__}: {message}")


async def _fetcher(runtime_url: str | None):
    import js  # type: ignore  # Pyodide only

    fetch = None if runtime_url else getattr(js, "webllmFetchModelFiles", None)
    if fetch is not None:
        return fetch, None
    base = runtime_url or getattr(js, "webllmBaseURL", None) or js.URL.new("/", js.location.href).href
    importer = js.Function.new("u", "return import(u)")  # Python has no import() of its own
    module = await importer(js.URL.new("download.js", base).href)
    return module.fetchModelFiles, str(base)


async def fetch_model(
    model: str,
    *,
    on_progress: Callable[[dict], Any] | None = None,
    hf_endpoint: str | None = None,
    cache: bool = True,
    runtime_url: str | None = None,
):
    """(sources, commit): one JSBufferSource per file (per shard of a split GGUF) and an async callable
    that stores what was downloaded in the model cache (call it once the model loaded)."""
    import js  # type: ignore
    from pyodide.ffi import JsException, create_proxy, jsnull, to_js  # type: ignore

    fetch, base = await _fetcher(runtime_url)
    progress = create_proxy(lambda p: on_progress(p.to_py())) if on_progress else None
    opts: dict[str, Any] = {}
    if progress is not None:
        opts["onProgress"] = progress
    if hf_endpoint:
        opts["hfEndpoint"] = hf_endpoint
    if base:
        opts["base"] = base
    if not cache:
        opts["store"] = jsnull
    try:
        files = await fetch(model, to_js(opts, dict_converter=js.Object.fromEntries))
    except JsException as e:
        if progress is not None:
            progress.destroy()
        raise _typed(e) from None

    async def commit() -> bool:
        try:
            return bool(await files.commit())
        finally:
            if progress is not None:
                progress.destroy()

    return [JSBufferSource(p) for p in files.parts], commit
