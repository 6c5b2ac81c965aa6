"""Reliability of the Python API on the native backend (lavapipe): limits are checked before anything is
allocated, a lost device fails the running request cleanly and the next request reloads the engine,
and simultaneous requests each get their own unmixed output.

lavapipe decodes ~1 token/s: one module-scoped ChatEngine, max_tokens <= 3, a small context window."""

import asyncio
import copy
import re

import pytest

import webllm_py
from webllm_py.default_model import default_model_path
from webllm_py.engine import Engine
from webllm_py.errors import ContextOverflowError, DeviceLostError, ModelTooLargeError, RequestError
from webllm_py.formats.quants import GGMLType, TensorInfo
from webllm_py.weights import upload_tensor

pytestmark = [pytest.mark.gpu, pytest.mark.slow]

CONTEXT = 96
MAX_TOKENS = 3
PROMPTS = ["What is the capital of France?", "Name a color.", "Say hi."]


@pytest.fixture(scope="module")
def chat(loop):
    """A ChatEngine on its own device (the device-loss test destroys it), greedy requests only."""
    return loop.run_until_complete(webllm_py.create(default_model_path(), context_window=CONTEXT))


def _ask(chat, prompt: str):
    return chat.chat.completions.create(
        messages=[{"role": "user", "content": prompt}], temperature=0, max_tokens=MAX_TOKENS
    )


def _text(resp: dict) -> str:
    return resp["choices"][0]["message"]["content"]


_ALONE: dict[str, str] = {}


def _alone(chat, loop, prompt: str) -> str:
    """The greedy answer to `prompt` run by itself (computed once per module: lavapipe is slow)."""
    if prompt not in _ALONE:
        _ALONE[prompt] = _text(loop.run_until_complete(_ask(chat, prompt)))
    return _ALONE[prompt]


# -- limits before allocation ---------------------------------------------------------------------
def test_prompt_longer_than_context_fails_with_sizes_and_engine_stays_usable(chat, loop):
    long_text = "apple " * (CONTEXT * 2)
    with pytest.raises(ContextOverflowError) as e:
        loop.run_until_complete(_ask(chat, long_text))
    n = len(
        chat.engine.tokenizer.encode(
            chat.engine.tokenizer.apply_chat_template([{"role": "user", "content": long_text}]), add_special=False
        )
    )
    assert n > CONTEXT
    assert str(n) in str(e.value) and str(CONTEXT) in str(e.value)
    # The next request on the same engine works and stops at max_tokens.
    resp = loop.run_until_complete(_ask(chat, PROMPTS[0]))
    assert resp["choices"][0]["finish_reason"] == "length"
    assert resp["usage"]["completion_tokens"] == MAX_TOKENS
    _ALONE.setdefault(PROMPTS[0], _text(resp))


def test_bad_request_parameters_are_typed_errors(chat, loop):
    with pytest.raises(RequestError):
        chat.chat.completions.create(messages=[{"role": "user", "content": "x"}], top_p=0)
    with pytest.raises(RequestError):
        chat.chat.completions.create(messages=[])
    with pytest.raises(RequestError):
        loop.run_until_complete(chat.chat.completions.create(messages=[{"role": "user", "content": "x"}], max_tokens=0))


def test_openai_request_forms_run_as_their_plain_equivalents(chat, loop):
    """A request written for OpenAI's API: content as text parts (SmolLM2's template takes only a string) and
    OpenAI's service bookkeeping fields (`user`, `store`, ... its SDKs send) give the plain request's answer;
    a part that is not text is a RequestError naming it, and the engine stays usable."""
    parts = [{"type": "text", "text": "What is the capital"}, {"type": "text", "text": "of France?"}]
    resp = loop.run_until_complete(
        chat.chat.completions.create(
            messages=[{"role": "user", "content": parts}],
            temperature=0,
            max_tokens=MAX_TOKENS,
            user="u-1",
            store=False,
            metadata={"k": "v"},
            service_tier="auto",
            parallel_tool_calls=True,
        )
    )
    plain = loop.run_until_complete(_ask(chat, "What is the capital\nof France?"))
    assert _text(resp) == _text(plain) and resp["usage"]["prompt_tokens"] == plain["usage"]["prompt_tokens"]
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA=="}}
    with pytest.raises(RequestError, match="image_url"):
        chat.chat.completions.create(messages=[{"role": "user", "content": [image]}])
    assert _text(loop.run_until_complete(_ask(chat, PROMPTS[0]))) == _alone(chat, loop, PROMPTS[0])


class _CountingDevice:
    """The session device with shrunken limits, recording every buffer size asked for."""

    def __init__(self, device, max_binding: int):
        self._dev = copy.copy(device)
        self._dev.limits = {
            **device.limits,
            "max_storage_buffer_binding_size": max_binding,
            "max_buffer_size": max_binding,
        }
        self.sizes: list[int] = []
        self.weight_sizes: list[int] = []  # of buffers labelled as a tensor

    def __getattr__(self, name):
        return getattr(self._dev, name)

    @property
    def max_binding_size(self):
        return self._dev.max_binding_size

    def create_buffer(self, size, label=""):
        self.sizes.append(size)
        if label.endswith(".weight") or ".weight[" in label:
            self.weight_sizes.append(size)
        return self._dev.create_buffer(size, label)


def test_tensor_over_binding_limit_raises_before_allocating(device):
    small = _CountingDevice(device, 1 << 20)
    # A synthetic Q8_0 tensor of 2048 x 1024: 2048 * 1024 / 32 blocks * 34 bytes = 2.2 MB > 1 MiB.
    info = TensorInfo("blk.0.ffn_up.weight", (1024, 2048), GGMLType.Q8_0, 0, 2048 * 1024 // 32 * 34)
    with pytest.raises(ModelTooLargeError) as e:
        upload_tensor(small, source=object(), info=info)
    assert str(info.nbytes) in str(e.value) and str(1 << 20) in str(e.value)
    assert small.sizes == []  # nothing was allocated for it


def test_model_over_binding_limit_raises_model_too_large(device):
    # Matrices past the limit are split into blocks of 64 rows (weights.split_upload), but 64 rows of
    # SmolLM2's Q8_0 token embedding (49152 x 576: 612 bytes a row) are 39168 bytes, past 32 KiB.
    small = _CountingDevice(device, 32 << 10)
    with pytest.raises(ModelTooLargeError, match=r"token_embd\.weight.*39172 bytes, more than .*32768 bytes"):
        asyncio.run(Engine.load(default_model_path(), device=small, context_window=32))
    assert max(small.weight_sizes, default=0) <= 32 << 10  # no weight buffer above the limit was ever requested


# -- concurrency ----------------------------------------------------------------------------------
def test_simultaneous_requests_get_their_own_output(chat, loop):
    alone = [_alone(chat, loop, p) for p in PROMPTS]
    assert len(set(alone)) > 1  # different prompts, different answers: mixing would show

    async def together():
        return await asyncio.gather(*(_ask(chat, p) for p in PROMPTS))

    both = loop.run_until_complete(together())
    assert [_text(r) for r in both] == alone
    assert all(r["usage"]["completion_tokens"] == MAX_TOKENS for r in both)
    assert len({r["id"] for r in both}) == len(PROMPTS)


def test_simultaneous_streams_are_not_interleaved(chat, loop):
    alone = [_alone(chat, loop, p) for p in PROMPTS[:2]]

    async def stream(p):
        parts = []
        async for chunk in chat.chat.completions.create(
            messages=[{"role": "user", "content": p}], temperature=0, max_tokens=MAX_TOKENS, stream=True
        ):
            parts.append(chunk["choices"][0]["delta"].get("content") or "")
        return "".join(parts)

    async def together():
        return await asyncio.gather(*(stream(p) for p in PROMPTS[:2]))

    assert loop.run_until_complete(together()) == alone


# -- device loss ----------------------------------------------------------------------------------
def test_device_lost_mid_generation_then_next_request_reloads(chat, loop):
    expected = _alone(chat, loop, PROMPTS[0])
    old_engine = chat.engine

    async def lose_device_while_streaming():
        got = 0
        async for chunk in chat.chat.completions.create(
            messages=[{"role": "user", "content": PROMPTS[0]}], temperature=0, max_tokens=MAX_TOKENS, stream=True
        ):
            got += 1
            chat.engine.device.destroy()  # the GPU goes away between two tokens
        return got

    with pytest.raises(DeviceLostError):
        loop.run_until_complete(lose_device_while_streaming())
    assert old_engine.lost
    # A request queued on the dead engine fails the same typed way, without touching the GPU.
    with pytest.raises(DeviceLostError):
        loop.run_until_complete(old_engine.complete([1, 2, 3], max_tokens=1))

    # The next request through the ChatEngine reloads (new device, weights, kernels) and answers as before.
    resp = loop.run_until_complete(_ask(chat, PROMPTS[0]))
    assert chat.engine is not old_engine and not chat.engine.lost
    assert chat.engine.device is not old_engine.device
    assert chat.reloads == 1
    assert _text(resp) == expected


def test_after_unload_requests_fail_with_model_not_loaded(chat, loop):
    """A deliberate unload is not a device loss: no reload, a typed error telling what to do (runs last:
    it unloads the module's engine)."""
    from webllm_py.errors import ModelNotLoadedError

    reloads = chat.reloads
    chat.unload()
    with pytest.raises(ModelNotLoadedError):
        loop.run_until_complete(_ask(chat, PROMPTS[0]))
    assert chat.reloads == reloads


def test_model_over_gpu_memory_says_needed_and_allocated(device):
    """An adapter with 40 MiB of memory (allocations past it fail as wgpu's GPUOutOfMemoryError): loading
    SmolLM2 (94 MB of weights) is a ModelTooLargeError with what it needs and what it could allocate."""
    import wgpu

    from webllm_py.formats.gguf import GGUFFile
    from webllm_py.formats.source import FileSource

    class SmallMemory(_CountingDevice):
        def create_buffer(self, size, label=""):
            if sum(self.sizes) + size > 40 << 20:
                raise wgpu.GPUOutOfMemoryError("out of memory")
            return super().create_buffer(size, label)

    small = SmallMemory(device, device.max_binding_size)
    weights = sum(t.nbytes for t in GGUFFile(FileSource(default_model_path())).tensors.values())
    with pytest.raises(
        ModelTooLargeError,
        match=rf"needs \d+ bytes \({weights} of weights, \d+ of KV cache .*"
        r"could allocate \d+ of them",
    ) as e:
        asyncio.run(Engine.load(default_model_path(), device=small, context_window=64))
    needed, got = (int(v) for v in re.search(r"needs (\d+) bytes .* could allocate (\d+)", str(e.value)).groups())
    assert weights < needed and 0 < got <= 40 << 20 < needed
