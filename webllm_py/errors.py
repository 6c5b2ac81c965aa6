"""Typed errors. Each message tells the user what happened and what to do about it."""


class WebLLMError(Exception):
    """Base class for every error webllm_py raises on purpose."""


class GPUUnavailableError(WebLLMError):
    """No WebGPU adapter could be had (browser without WebGPU, no Vulkan driver natively)."""


class GPUFeatureError(WebLLMError):
    """The adapter lacks a feature a kernel needs (e.g. shader-f16)."""


class DeviceLostError(WebLLMError):
    """The GPU device was lost (destroyed, driver reset, out of memory); reload the engine."""


# What a user should do after a DeviceLostError, said the same way wherever one is raised.
DEVICE_LOST_ADVICE = (
    "Send the request again: an engine from create() reloads the model by itself "
    "(an Engine loaded directly must be loaded again)."
)


class ShaderError(WebLLMError):
    """A WGSL kernel failed to compile; this is a bug in webllm_py's templates."""


class GPUCommandError(WebLLMError):
    """The GPU rejected submitted commands (a validation error: their results are not to be trusted);
    a bug in webllm_py. The device stays usable."""


class ModelFormatError(WebLLMError):
    """A model file is malformed, truncated or of an unsupported kind."""


class UnsupportedModelError(WebLLMError):
    """The model's architecture or quantization type is not supported."""


class ContextOverflowError(WebLLMError):
    """The prompt (plus requested tokens) does not fit in the context window."""


class ModelTooLargeError(WebLLMError):
    """A tensor or the whole model exceeds the adapter's buffer limits or memory."""


class TokenizerError(WebLLMError):
    """The tokenizer data is malformed or a text cannot be encoded."""


class ChatTemplateError(WebLLMError):
    """The chat template failed to render (raise_exception in the template, bad messages)."""


class RequestError(WebLLMError):
    """A generation request has invalid parameters (e.g. top_p <= 0)."""


class AbortedError(WebLLMError):
    """The request was interrupted by the caller."""


class KVCacheFullError(ContextOverflowError):
    """The paged KV cache has no free blocks left; the cache stays usable (free a sequence, or load
    the engine with more cache blocks / a smaller context)."""


class ModelNotLoadedError(WebLLMError):
    """A generation/stats request arrived before a model was loaded (call webllm.create({model}) first)."""


class ProtocolError(RequestError):
    """A worker message the protocol does not allow (static/protocol.js: unknown kind, bad id); raised by worker.js."""


class NotInitializedError(WebLLMError):
    """A worker request before `init`; raised by worker.js."""


class SetupError(WebLLMError):
    """A wheel the browser worker installs is not served under /wheels/ (run scripts/setup.sh); raised by worker.js."""


class WorkerError(WebLLMError):
    """The browser worker could not start, crashed, or failed outside Python; raised by webllm.js / worker.js."""


class ModelURLError(RequestError):
    """A model URL or `hf:` name cannot be used: unparseable, an unsupported scheme, a malformed hf: form."""


class DownloadError(WebLLMError):
    """A model file could not be downloaded (network down, HTTP error, a connection that kept dropping)."""


class ModelNotFoundError(DownloadError):
    """The server answered 404/410 for a model file (a wrong URL, a private repository, a missing shard)."""


class CORSError(DownloadError):
    """The model's server is reachable but does not allow this page's origin to read it (no CORS headers)."""


class ContentLengthError(DownloadError):
    """The server sent a different number of bytes than its Content-Length announced."""


class NotGGUFError(ModelFormatError):
    """The URL answered with something that is not a GGUF file (often an HTML error or login page)."""


class IntegrityError(DownloadError):
    """A model file does not match its sha256 (from /models/index.json or recorded when it was cached)."""


class SiteError(WebLLMError):
    """`serve` or `build` cannot make the site it was asked for: Pyodide not set up, a --model that is not a
    GGUF file, a bad --allow-origin, an output folder it must not write into."""


class KernelPolicyError(WebLLMError, ValueError):
    """A KernelPolicy (bench options, tests) asks for a kernel that cannot run, or cannot be exact, here: on
    this adapter, for this model's shapes or for this KV cache."""
