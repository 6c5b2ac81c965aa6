"""The generation loop: prefill the prompt in chunks, decode token by token, stream text.

One Engine holds one model on one device. Requests are served one at a time (a FIFO turn, see
_acquire), so concurrent callers queue and never interleave. A stream whose consumer stopped pulling
(neither finished nor closed) would hold the engine forever: once it has been idle for
`stream_idle_timeout` seconds, the next request aborts it (it ends with finish_reason "abort").
The KV cache keeps the previous conversation of each sequence, and a new prompt that starts with it
only prefills what is new (multi-turn reuse).
"""

from __future__ import annotations

import asyncio
import collections
import inspect
import operator
import struct
import time
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Callable

from .checkpoint import Checkpoint, open_checkpoint
from .errors import (
    DEVICE_LOST_ADVICE,
    ContextOverflowError,
    DeviceLostError,
    ModelNotLoadedError,
    ModelTooLargeError,
    RequestError,
    WebLLMError,
)
from .gpu import Device, request_device
from .kv_cache import KVCaches
from .models import build_model
from .models.store import WeightStore
from .planner import DEFAULT_POLICY, Adapter, KernelPolicy, kv_cache_dtype
from .planner import prefill_chunk as default_prefill_chunk
from .planner import prefill_waits
from .sampling import SampleResult, Sampler, SamplingParams
from .tokenizer import StreamDecoder

BLOCK_SIZE = 16
STREAM_IDLE_TIMEOUT = 10.0  # seconds a stream's consumer may leave a token unpulled while others wait
# Pipelined decode's steps in flight (Engine.decode_depth): step k copies its sample into readback slot
# k % depth, which the host maps while steps k+1 .. k+depth-1 are queued; step k+depth writes the slot again
# only once the host has read and unmapped it. 2: one step runs while the host reads the one before. Deeper
# queues keep the GPU busy through host stalls longer than a step (a map's resolution, a JS collection:
# dawn.node polls for it from the event loop, a browser answers through its GPU process), at the cost of
# depth - 1 steps run past a stop and discarded.
DECODE_DEPTH = 2
PROMPT_PROGRAMS = 4  # prompt-step Programs kept, by token count (Engine._prompt_program)


def check_on_progress(on_progress) -> None:
    """A progress callback is a plain function taking a dict, or None: checked by create() before a download
    and by Engine.load before the weights (a non-function was a TypeError from the first weight upload)."""
    if on_progress is not None and not callable(on_progress):
        raise RequestError(f"on_progress must be a function taking a dict, or None, got {on_progress!r}.")
    # It is called, not awaited: an async function's calls made coroutines that never ran (no progress at all,
    # a RuntimeWarning each).
    if inspect.iscoroutinefunction(on_progress):
        raise RequestError(
            f"on_progress must be a plain function (it is called, not awaited), got the async function {on_progress!r}."
        )


class Interrupt:
    """One request's stop switch. set() ends that request's generation after its current token (on a CPU
    adapter, during a long prompt, after the prompt's current chunk: planner.prefill_waits); set before the
    request holds the engine (just sent, not yet made, or queued behind another: it leaves the queue then),
    the request ends before any work: finish_reason "abort", no tokens. It belongs to the request, not to
    the engine: an engine-wide flag, reset as each generation began, lost a stop that came before the start
    (the worker's `abort` of a request it had just taken, a page's Stop right after Send), and stopped
    whichever request held the engine when the stop was meant for one queued behind it. Engine.interrupt()
    sets the running request's."""

    __slots__ = ("_set", "_wake")

    def __init__(self) -> None:
        self._set = False
        self._wake: Callable[[], None] | None = None  # set while its request waits in the engine's queue

    def set(self) -> None:
        self._set = True
        if self._wake is not None:  # a queued request leaves now, not once the one ahead of it has finished
            self._wake()

    def is_set(self) -> bool:
        return self._set


@dataclass(eq=False)
class _Turn:
    """One request's hold on the engine (or its place in the queue for it)."""

    seq: int
    idle_since: float | None = None  # when a token was handed to a consumer that has not pulled again
    abandoned: bool = False  # aborted by a later request: the engine is no longer this one's to touch
    interrupt: Interrupt | None = None  # a generation's stop switch (Engine.interrupt() sets the holder's)


@dataclass
class Token:
    """One generated token as the engine streams it."""

    id: int
    text: str  # text this token completes (may be "" while a UTF-8 character is unfinished)
    logprob: float | None = None
    top_logprobs: list[tuple[int, float]] = field(default_factory=list)


@dataclass
class Stats:
    prompt_tokens: int = 0
    cached_prompt_tokens: int = 0
    completion_tokens: int = 0
    prefill_seconds: float = 0.0
    decode_seconds: float = 0.0
    finish_reason: str | None = None

    @property
    def prefill_tps(self) -> float:
        n = self.prompt_tokens - self.cached_prompt_tokens
        return n / self.prefill_seconds if self.prefill_seconds else 0.0

    @property
    def decode_tps(self) -> float:
        # The first completion token comes out of the prefill step.
        return max(self.completion_tokens - 1, 0) / self.decode_seconds if self.decode_seconds else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "cached_prompt_tokens": self.cached_prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "prefill_tokens_per_s": round(self.prefill_tps, 2),
            "decode_tokens_per_s": round(self.decode_tps, 2),
            "prefill_s": round(self.prefill_seconds, 4),
            "decode_s": round(self.decode_seconds, 4),
            "finish_reason": self.finish_reason,
        }


class Engine:
    def __init__(
        self,
        device: Device,
        checkpoint: Checkpoint,
        model: Any,
        cache: KVCaches,
        sampler: Sampler,
        context_window: int,
        prefill_chunk: int,
    ):
        self.device, self.checkpoint, self.model, self.cache = device, checkpoint, model, cache
        self.config, self.tokenizer = checkpoint.config, checkpoint.tokenizer
        self.sampler = sampler
        self.sample_op = sampler.bind(model.state.logits)
        self.context_window, self.prefill_chunk = context_window, prefill_chunk
        self.prefill_waits = prefill_waits(Adapter.of(device))  # a stop lands between prompt chunks (planner)
        self._holder: _Turn | None = None
        self._queue: collections.deque[_Turn] = collections.deque()
        self._wake = asyncio.Event()  # set (and replaced) whenever the holder or the queue changes
        self.stream_idle_timeout: float | None = STREAM_IDLE_TIMEOUT  # None: a stream is never aborted
        self._cached: dict[int, list[int]] = {}  # token ids whose K/V are in the cache, per sequence
        self.last_stats = Stats()
        self.last_issue_seconds = 0.0
        self.lost = False  # the device is gone: this Engine cannot run again (ChatEngine reloads a new one)
        self.unloaded = False  # unload() was called: its buffers are gone, deliberately
        self._decode = None  # captured decode Program, built on first use
        self._prompt_programs: dict[int, Any] = {}  # prompt steps' Programs by token count, least recent first
        self._next_decode = None  # (readback slot or None, command buffer) of the next decode step, encoded ahead
        self._readback: list = []  # pipelined decode's readback slots (create_readback), made on first use
        # Decode without the GPU waiting on the host (_decode_pipelined); False: each step waits for its
        # token's readback before the next is staged, as under a constraint (tests and bench compare the two).
        self.pipelined_decode = True
        self.decode_depth = DECODE_DEPTH  # pipelined decode's steps in flight (>= 2)
        self.owns_device = False  # set by load(): whether unload() may destroy the device

    @classmethod
    async def load(
        cls,
        model: Any,
        *,
        backend: str | None = None,
        device: Device | None = None,
        context_window: int | None = 4096,
        prefill_chunk: int | None = None,
        max_sequences: int = 2,
        on_progress: Callable[[dict], None] | None = None,
        stream_idle_timeout: float | None = STREAM_IDLE_TIMEOUT,
        policy: KernelPolicy | None = None,
    ) -> "Engine":
        """prefill_chunk: tokens per prefill step (None: planner.prefill_chunk, by the adapter).
        policy: kernel choices other than the planner's defaults (planner.KernelPolicy: bench, tests)."""
        for name, v, least in (
            ("context_window", context_window, 2),
            ("prefill_chunk", 1 if prefill_chunk is None else prefill_chunk, 1),
            ("max_sequences", max_sequences, 1),
        ):
            if (v is not None or name != "context_window") and not _is_int(v, least):
                raise RequestError(f"{name} must be an integer >= {least}, got {v!r}.")
        # A device of another kind (a backend's name, wgpu's own GPUDevice) was an AttributeError from deep
        # inside the load ('str' object has no attribute 'info'). Wrappers that forward to a Device (tests) pass.
        if device is not None and not isinstance(device, Device) and not callable(getattr(device, "kernel", None)):
            raise RequestError(
                f"device must be a webllm_py.gpu.Device (from webllm_py.gpu.request_device) or None, got {device!r}; "
                "a backend by name: backend=..."
            )
        if policy is not None and not isinstance(policy, KernelPolicy):
            raise RequestError(f"policy must be a planner.KernelPolicy or None, got {policy!r}.")
        check_on_progress(on_progress)
        if stream_idle_timeout is not None and (
            isinstance(stream_idle_timeout, bool)
            or not isinstance(stream_idle_timeout, (int, float))
            or not stream_idle_timeout > 0
        ):
            raise RequestError(
                f"stream_idle_timeout must be a number of seconds > 0 or None, got {stream_idle_timeout!r}."
            )
        owns_device = device is None
        ckpt = open_checkpoint(model)  # validated before anything is allocated (models/config.py)
        device = device or await request_device(backend)
        cfg = ckpt.config
        prefill_chunk = prefill_chunk or default_prefill_chunk(Adapter.of(device))
        ctx = min(cfg.context_length, context_window or cfg.context_length)
        policy = policy or DEFAULT_POLICY
        kv_dtype = kv_cache_dtype(Adapter.of(device), cfg.head_dim, policy)
        # one cache per attention window: a windowed one holds the window per sequence (KVCaches), so the
        # context that fits is the plan's, not that of full-size caches in every layer
        windows = cfg.layer_windows()
        shape = (windows, cfg.n_kv_heads, cfg.head_dim, BLOCK_SIZE)
        fit = KVCaches.fit(device, *shape, max_sequences, prefill_chunk, kv_dtype) * BLOCK_SIZE
        if context_window is None:  # the model's own context, or as much of it as the adapter's caches allow
            ctx = min(ctx, max(fit, BLOCK_SIZE))
        blocks_per_seq = -(-ctx // BLOCK_SIZE)
        sizes = KVCaches.sizes(*shape, blocks_per_seq, max_sequences, prefill_chunk, kv_dtype)
        if ctx > fit:
            raise ModelTooLargeError(_context_too_large(device, ctx, fit, max_sequences, prefill_chunk, sizes))
        store = (WeightStore.from_hf if ckpt.format == "hf" else WeightStore)(
            device, ckpt.tensors, on_progress=on_progress
        )
        kv = 2 * sum(n * layer_bytes for n, layer_bytes in sizes.values())  # K and V
        cache = None
        try:
            cache = KVCaches(
                device,
                windows,
                cfg.n_kv_heads,
                cfg.head_dim,
                block_size=BLOCK_SIZE,
                blocks_per_seq=blocks_per_seq,
                max_sequences=max_sequences,
                max_tokens=prefill_chunk,
                dtype=kv_dtype,
            )
            net = build_model(device, cfg, store, cache, max_tokens=prefill_chunk, policy=policy)
        except Exception as e:
            if type(e).__name__ != "GPUOutOfMemoryError":  # wgpu's; a browser reports it asynchronously
                raise
            got = (kv if cache is not None else 0) + store.loaded_bytes
            raise ModelTooLargeError(
                f"The GPU ran out of memory loading the model: it needs {store.total_bytes + kv} bytes "
                f"({store.total_bytes} of weights, {kv} of KV cache for {ctx} positions x {max_sequences} "
                f"sequence(s)) and could allocate {got} of them. Use a smaller or more quantized model, or a "
                f"smaller context_window."
            ) from e
        sampler = Sampler(device, cfg.vocab_size)
        await device.check_errors()
        if on_progress:
            on_progress({"stage": "ready", "loaded": store.loaded_bytes, "total": store.total_bytes})
        engine = cls(device, ckpt, net, cache, sampler, ctx, prefill_chunk)
        engine.owns_device = owns_device
        engine.stream_idle_timeout = stream_idle_timeout
        return engine

    # -- one forward step ---------------------------------------------------------------------------
    def _stage_step(self, seq: int, ids: list[int] | None, pos0: int | None = None) -> None:
        """Write a step's inputs (its token ids, position and count, sequence `seq`'s block table) to the
        model's state buffers, with KV blocks for the new positions (each cache's block table to its own buffer).
        ids None: one token that the step's own commands copy in (pipelined decode); pos0: the first
        position (default: right after the sequence's cached tokens)."""
        n = 1 if ids is None else len(ids)
        pos0 = len(self._cached[seq]) if pos0 is None else pos0
        self.cache.ensure(seq, pos0 + n, first_new=pos0)
        s, d = self.model.state, self.device
        if ids is not None:
            d.write_buffer(s.ids, struct.pack(f"<{n}I", *ids))
        d.write_buffer(s.step, struct.pack("<2I", pos0, n))
        for c in self.cache:
            d.write_buffer(c.table, c.table_bytes(seq))

    async def _step(self, seq: int, ids: list[int], sample: bool):
        n = len(ids)
        d = self.device
        decode = n == 1 and sample
        # A browser's start-up kernels, compiling since the page started, one after another: a prompt
        # step waits only for its layers' ones; the head's and sampling's (recorded last) compile while
        # the layers run (docs/benchmarks.md, "SwiftShader: sampling_draw's workgroup")
        first = not decode and sample and d.kernels_compiling
        await d.kernels_ready(d.kernels_of(lambda rec: rec.replay(self._prompt_program(n))) if first else None)
        self._stage_step(seq, ids)
        t = time.perf_counter()
        if decode:  # the step's commands were encoded while the GPU ran the previous one
            d.submit_commands(self._decode_commands(None))
        else:
            with d.recorder() as rec:
                rec.replay(self._prompt_program(n))
            if sample:  # in a second submission: a browser device creates pipelines on first use, and
                # SwiftShader then compiles the head's and sampling's (~1.9 s for SmolLM2) while it
                # runs the layers, instead of before them
                if first:
                    await d.kernels_ready()
                with d.recorder() as rec:
                    self.model.record_head(rec, n)
                    self.sample_op.record(rec)
        self.last_issue_seconds = time.perf_counter() - t  # host time to issue the step (critical path)
        self._cached[seq].extend(ids)
        if decode:  # encode the next decode step now, overlapping this step's GPU work
            self._next_decode = (None, self._encode_decode())
        return await self.sampler.read() if sample else None

    def _decode_steps(self, seq: int, first: int, steps: int, pipelined: bool) -> AsyncIterator[SampleResult]:
        """Up to `steps` decode steps after `first`, the token just sampled: an iterator of each step's
        sample, whose consumer pulls the next one to go on with the token it got (generation and bench
        decode through here). pipelined: see _decode_pipelined; else each step is staged only once the
        previous token was read (what a constraint needs: its mask for a step depends on that token, and
        the consumer sets it before pulling)."""
        return self._decode_pipelined(seq, first, steps) if pipelined else self._decode_stepped(seq, first, steps)

    async def _decode_stepped(self, seq: int, first: int, steps: int) -> AsyncIterator[SampleResult]:
        tid = first
        for _ in range(steps):
            res = await self._step(seq, [tid], sample=True)
            yield res
            tid = res.token_id

    async def _decode_pipelined(self, seq: int, first: int, steps: int) -> AsyncIterator[SampleResult]:
        """Up to `steps` decode steps after `first`, the token just sampled (still in sampler.result),
        without the GPU waiting on the host between steps: each step copies its input id from the
        previous step's sample on the GPU and its own sample into a readback slot, and step k+1 is
        submitted before step k's sample is mapped (up to decode_depth - 1 steps ahead), so the GPU runs
        them while the host reads, streams and stages. Yields each step's sample. Pulling the next one takes
        the yielded token as the input of the step already running; closing the iterator instead discards
        the steps ahead: their K/V lie at the positions right after _cached, which the next step or prefill
        of the sequence writes over."""
        if steps <= 0:
            return
        depth = max(2, self.decode_depth)
        if len(self._readback) != depth:
            for buf in self._readback:  # another depth's slots (destroyed once work that copies into them has run)
                buf.destroy()
            self._readback = [self.device.create_readback(self.sampler.result.size) for _ in range(depth)]
            self._next_decode = None  # encoded for the old slots
        cached = self._cached[seq]
        pos = len(cached)
        cached.append(first)
        self._submit_fed(seq, pos, 0, depth)
        submitted, full = 1, None
        for i in range(steps):
            # the steps after this one first: they run while this one's sample is read
            while full is None and submitted < min(steps, i + depth):
                try:
                    self._submit_fed(seq, pos + submitted, submitted % depth, depth)
                    submitted += 1
                except ContextOverflowError as e:  # no KV block for it (nothing staged): raised where the
                    full = e  # stepped path raises it, once the token before it is out and the stream goes on
            raw = await self.device.map_read(self._readback[i % depth], self.sampler.result_size)
            res = self.sampler.parse(raw)
            yield res
            if full is not None and submitted == i + 1:
                raise full
            if i + 1 < steps:  # pulled again: the token is the input of the step running now
                cached.append(res.token_id)

    def _submit_fed(self, seq: int, pos: int, slot: int, depth: int) -> None:
        """Stage and submit a pipelined decode step at position `pos` whose sample goes to readback `slot`.
        Its position and block tables are queue writes issued after the previous step's submission, so
        they land between the two steps (WebGPU orders a queue's writes and submissions as issued)."""
        self._stage_step(seq, None, pos)
        t = time.perf_counter()
        self.device.submit_commands(self._decode_commands(slot))
        self.last_issue_seconds = time.perf_counter() - t
        nxt = (slot + 1) % depth  # encoded while this step runs (submitted once the host has unmapped the slot)
        self._next_decode = (nxt, self._encode_decode(nxt))

    async def _prefill(self, seq: int, ids: list[int], interrupt: Interrupt | None = None):
        """Run `ids` (non-empty) in chunks of prefill_chunk and sample after the last one: the chunks
        before it queue on the GPU without a readback between them, except where prefill_waits: there each
        chunk is waited for and `interrupt` checked before the next (None is returned when it was set; the
        chunks that ran stay cached, as a prefix a later request can reuse)."""
        result = None
        for i in range(0, len(ids), self.prefill_chunk):
            if i and interrupt is not None and self.prefill_waits:
                await self.device.read_buffer(self.model.state.ids, 0, 4)  # the chunk before has run
                if interrupt.is_set():
                    return None
            chunk = ids[i : i + self.prefill_chunk]
            result = await self._step(seq, chunk, sample=i + self.prefill_chunk >= len(ids))
        return result

    def _encode_decode(self, slot: int | None = None):
        """A finished command buffer of one decode step (the captured Program, replayed). With a readback
        slot (pipelined decode), the step takes its input id from the previous step's sample first and
        copies its own sample (all result words: any request's logprobs) into the slot last."""
        rec = self.device.recorder()
        res = self.sampler.result
        if slot is not None:
            rec.copy_buffer(res, 0, self.model.state.ids, 0, 4)
        rec.replay(self._decode_program())
        if slot is not None:
            rec.copy_buffer(res, 0, self._readback[slot], 0, res.size)
        return rec.finish()

    def _decode_commands(self, slot: int | None):
        """The decode step's command buffer: the one encoded ahead if it was encoded for this slot."""
        ahead, self._next_decode = self._next_decode, None
        if ahead is not None and ahead[0] == slot:
            return ahead[1]
        return self._encode_decode(slot)

    async def logits(self, ids: list[int], seq: int = 1) -> bytes:
        """Last-token logits (f32 bytes) of `ids` run from an empty cache on sequence `seq`: for
        checking the model against a reference, not for generation."""
        turn = await self._acquire(seq)
        try:
            self.reset(seq)
            self._cached[seq] = []
            try:
                for i in range(0, len(ids), self.prefill_chunk):
                    chunk = ids[i : i + self.prefill_chunk]
                    await self._step(seq, chunk, sample=False)
                # The logits of the last step: run the head alone on the last token's row.
                with self.device.recorder() as rec:
                    self.model.record_head(rec, len(chunk))
                return await self.device.read_buffer(self.model.state.logits)
            finally:
                self.reset(seq)
        finally:
            self._release(turn)

    # -- one request at a time ----------------------------------------------------------------------
    async def _acquire(self, seq: int, interrupt: Interrupt | None = None) -> _Turn | None:
        """Wait for the engine (first come, first served); None if `interrupt` is set while this waits
        (the request leaves the queue at once). The first in the queue aborts a holder
        whose consumer has left a token unpulled for stream_idle_timeout seconds: a stream abandoned
        without aclose() (a `break`, an exception kept by the caller) would otherwise block every
        later request. Waiters poll the holder, so the abort lands within 1.25 x the timeout."""
        turn = _Turn(seq)
        self._queue.append(turn)
        if interrupt is not None:
            interrupt._wake = self._notify
        try:
            while self._holder is not None or self._queue[0] is not turn:
                if interrupt is not None and interrupt.is_set():
                    self._queue.remove(turn)
                    self._notify()  # the next in the queue may now be first
                    return None
                h, timeout, limit = self._holder, None, self.stream_idle_timeout
                if h is not None and limit is not None:
                    timeout = limit / 4
                    if h.idle_since is not None and self._queue[0] is turn:
                        left = h.idle_since + limit - time.monotonic()
                        if left <= 0:
                            self._abandon(h)
                            continue
                        timeout = min(timeout, left)
                try:
                    await asyncio.wait_for(self._wake.wait(), timeout)
                except asyncio.TimeoutError:
                    pass
        except BaseException:
            self._queue.remove(turn)
            self._notify()
            raise
        finally:
            if interrupt is not None:
                interrupt._wake = None
        self._queue.popleft()
        self._holder = turn
        self._notify()  # the next in the queue now judges this holder
        return turn

    def _release(self, turn: _Turn) -> None:
        if self._holder is turn:
            self._holder = None
            self._notify()

    def _abandon(self, turn: _Turn) -> None:
        turn.abandoned = True
        self.reset(turn.seq)  # its conversation stopped mid-way: start that sequence afresh next time
        self._release(turn)

    def _notify(self) -> None:
        self._wake.set()
        self._wake = asyncio.Event()

    def _decode_program(self):
        """A decode step's dispatches never change (sizes are fixed at n=1; positions live in the
        step buffer), so they are captured once and replayed every token."""
        if self._decode is None:

            def record(rec):
                self.model.record(rec, 1, logits=True)
                self.sample_op.record(rec)

            self._decode = self.device.capture(record)
        return self._decode

    def _prompt_program(self, n: int):
        """A prompt step's layers for n tokens, captured once per n and replayed: like the decode step's, its
        dispatches depend on n alone (positions and the block table live in the step buffers). Replayed, a
        browser records the chunk in one JS call instead of three a dispatch, time the GPU otherwise waits
        before a prompt starts (SmolLM2's 391 dispatches under Pyodide on Dawn: 4.3-4.9 ms recorded, 0.75-0.79
        ms replayed on the CPU machine). The last PROMPT_PROGRAMS counts are kept: a long prompt's full
        chunks share one."""
        program = self._prompt_programs.pop(n, None)
        if program is None:
            program = self.device.capture(lambda rec: self.model.record(rec, n, logits=False))
        self._prompt_programs[n] = program
        while len(self._prompt_programs) > PROMPT_PROGRAMS:
            del self._prompt_programs[next(iter(self._prompt_programs))]
        return program

    def interrupt(self) -> None:
        """Stop the running generation after its current token (finish_reason "abort"); queued requests and
        later ones are untouched. To stop one request whether it runs, waits or has not started, pass it an
        Interrupt (generate(interrupt=...), create(interrupt=...)) and set that."""
        holder = self._holder
        if holder is not None and holder.interrupt is not None:
            holder.interrupt.set()

    def reset(self, seq: int = 0) -> None:
        """Forget a sequence's cached conversation."""
        self._cached.pop(seq, None)
        self.cache.free(seq)

    # -- generation ---------------------------------------------------------------------------------
    async def generate(
        self,
        prompt_ids: list[int],
        params: SamplingParams | None = None,
        *,
        max_tokens: int | None = None,
        stop: str | list[str] | None = None,
        ignore_eos: bool = False,
        seq: int = 0,
        constraint=None,
        stats: Stats | None = None,
        interrupt: Interrupt | None = None,
    ) -> AsyncIterator[Token]:
        """Yield generated tokens. `stats` (or `self.last_stats`, which is the latest request's and
        may already be another's once this one has ended): its `finish_reason` says why it ended: "stop" (EOS or a
        stop string), "length" (max_tokens or the context window), or "abort" (`interrupt` was set, or
        interrupt() called while this ran, or a later request took the engine from this stream after it sat
        unpulled for stream_idle_timeout). `interrupt`: this request's Interrupt; set before the request
        holds the engine, it ends with no tokens (and no prefill).
        `constraint`: a structured.Constraint (grammar); only tokens it allows are drawn, EOS only once
        the output is complete, and generation stops when the grammar admits nothing more."""
        params = params or SamplingParams()
        if not isinstance(params, SamplingParams):
            raise RequestError(f"params must be a SamplingParams (webllm_py.sampling), got {type(params).__name__}.")
        params.validate()
        prompt_ids = _token_ids(prompt_ids, self.config.vocab_size)
        if not prompt_ids:
            raise RequestError("The prompt is empty: give at least one token (e.g. text, or a BOS token).")
        if max_tokens is not None and not _is_int(max_tokens, 1):
            raise RequestError(f"max_tokens (max_completion_tokens) must be an integer >= 1, got {max_tokens!r}.")
        if len(prompt_ids) >= self.context_window:
            raise ContextOverflowError(
                f"The prompt has {len(prompt_ids)} tokens but the context window is {self.context_window}: "
                f"shorten the conversation or load the model with a larger context_window."
            )
        budget = self.context_window - len(prompt_ids)
        max_new = min(max_tokens or budget, budget)
        stops = [s for s in _stop_list(stop) if s]
        interrupt = interrupt if interrupt is not None else Interrupt()
        turn = await self._acquire(seq, interrupt)
        if turn is None:  # stopped while it waited for the engine: it never held it, nothing to run
            stats = self.last_stats = stats if stats is not None else Stats()
            stats.prompt_tokens, stats.finish_reason = len(prompt_ids), "abort"
            return
        try:
            self._check_lost()  # a request queued behind the one that lost the device
            turn.interrupt = interrupt
            stats = self.last_stats = stats if stats is not None else Stats()
            stats.prompt_tokens = len(prompt_ids)
            if interrupt.is_set():  # stopped before it started: nothing to run
                stats.finish_reason = "abort"
                return
            try:
                gen = self._generate_locked(
                    prompt_ids, params, max_new, stops, ignore_eos, seq, stats, constraint, turn.interrupt
                )
                async for tok in gen:
                    turn.idle_since = time.monotonic()
                    yield tok
                    turn.idle_since = None
                    if turn.abandoned:  # pulled again after a later request took the engine
                        stats.finish_reason = "abort"
                        await gen.aclose()  # suspended at a yield: closing it touches nothing
                        return
            except BaseException as e:
                if turn.abandoned:  # e.g. aclose() long after: the engine is another request's now
                    raise
                # The cache may hold a half-written step; start this sequence afresh next time.
                self.reset(seq)
                if self.unloaded and isinstance(e, Exception):  # its buffers went away under it: not a loss
                    raise ModelNotLoadedError(_UNLOADED) from e
                if isinstance(e, Exception) and not isinstance(e, WebLLMError) and self._probe_lost():
                    raise DeviceLostError(
                        f"The GPU device was lost during generation ({type(e).__name__}: "
                        f"{str(e).strip().splitlines()[-1] if str(e).strip() else ''}). " + DEVICE_LOST_ADVICE
                    ) from e
                if isinstance(e, DeviceLostError):
                    self.lost = True
                raise
        finally:
            self._release(turn)

    def _check_lost(self) -> None:
        if self.unloaded:
            raise ModelNotLoadedError(_UNLOADED)
        if self.lost:
            raise DeviceLostError("The GPU device of this engine was lost. " + DEVICE_LOST_ADVICE)

    def _probe_lost(self) -> bool:
        """After an unexpected GPU-layer exception: is the device gone? The native backend (wgpu-py)
        raises a validation error on every call to a lost device, so a 4-byte buffer tells. The browser
        backend raises DeviceLostError itself (device.lost resolved) and never gets here for a loss."""
        if self.lost:
            return True
        try:
            self.device.create_buffer(4, label="lost-probe").destroy()
        except Exception:
            self.lost = True
        return self.lost

    async def _generate_locked(self, prompt, params, max_new, stops, ignore_eos, seq, stats, constraint, interrupt):
        cached = self._cached.setdefault(seq, [])
        reuse = 0
        while reuse < min(len(cached), len(prompt) - 1) and cached[reuse] == prompt[reuse]:
            reuse += 1  # keep at least one prompt token to prefill: its logits give the first token
        if not self.cache.resumable(seq, reuse):
            reuse = 0  # blocks the next token would see fell out of a window and were released
        self.cache.truncate(seq, reuse)
        del cached[reuse:]
        stats.cached_prompt_tokens = reuse
        self.sampler.set_params(params)
        self.sampler.reset(prompt)
        # Structured output: the mask for the state after the tokens so far goes in before each sampled step.
        self.sampler.set_mask(constraint.mask() if constraint is not None else None)

        t0 = time.perf_counter()
        todo = prompt[reuse:]
        result = await self._prefill(seq, todo, interrupt)
        t1 = time.perf_counter()
        stats.prefill_seconds = t1 - t0
        if result is None:  # stopped between prompt chunks
            stats.finish_reason = "abort"
            return
        self.device.first_token_done()

        decoder = StreamDecoder(self.tokenizer)
        held = ""  # text that might be the start of a stop string
        eos = self.tokenizer.eos_ids
        finish, hit = "length", False
        # Decode pipelined (the next step runs on the GPU while the host reads and streams a token), except
        # under a constraint, whose mask for a step depends on the token before. The iterator's body starts at
        # the first pull, i.e. once the prefill's token is taken as an input.
        steps = self._decode_steps(seq, result.token_id, max_new - 1, self.pipelined_decode and constraint is None)
        try:
            for i in range(max_new):
                tid = result.token_id
                if tid in eos and (not ignore_eos or constraint is not None):
                    finish = "stop"
                    break
                if constraint is not None:
                    constraint.advance(tid)
                stats.completion_tokens += 1
                held += decoder.feed(tid)
                out, held, hit = _split_stop(held, stops)
                yield Token(tid, out, result.logprob, result.top_logprobs)
                if hit or (constraint is not None and constraint.complete):  # the grammar admits nothing more
                    finish = "stop"
                    break
                if interrupt.is_set():
                    finish = "abort"
                    break
                if i + 1 == max_new:
                    break
                if constraint is not None:
                    self.sampler.set_mask(constraint.mask())
                result = await steps.__anext__()
        finally:
            await steps.aclose()  # pipelined: discards the step run ahead, if any
        if not hit:  # after a stop string the held-back text belongs to it; otherwise emit the rest
            tail = held + decoder.flush()
            if tail:
                yield Token(-1, tail)
        stats.decode_seconds = time.perf_counter() - t1
        stats.finish_reason = finish

    async def complete(self, prompt_ids: list[int], **kw) -> tuple[str, list[int]]:
        """Generate to the end; returns (text, token ids)."""
        text, ids = [], []
        async for t in self.generate(prompt_ids, **kw):
            text.append(t.text)
            if t.id >= 0:
                ids.append(t.id)
        return "".join(text), ids

    def unload(self) -> None:
        """Free the GPU memory. A device the engine requested itself is destroyed with it; a device
        the caller passed in is shared (tests, several engines): then the KV cache is freed now and the
        weights when this engine is garbage-collected."""
        self.unloaded = True
        if self.owns_device:
            self.device.destroy()
        else:
            self.cache.destroy()

    def runtime_stats(self) -> dict[str, Any]:
        info = self.device.info
        return {
            **self.last_stats.as_dict(),
            "backend": info.backend,
            "adapter": f"{info.vendor} {info.architecture}".strip(),
            "model": self.checkpoint.name,
            "context_window": self.context_window,
            # kernels compiled while the runtime started (browser), and how long steps waited for them
            "kernels_ahead": self.device.kernels_ahead,
            "kernels_ahead_wait_s": round(self.device.kernels_ahead_wait_s, 4),
        }


def _context_too_large(
    device: Device, ctx: int, fit: int, max_sequences: int, prefill_chunk: int, sizes: dict[int | None, tuple[int, int]]
) -> str:
    """Engine.load's ModelTooLargeError for a context window past `fit` positions: which of the caches
    KVCaches would allocate (`sizes`, KVCaches.sizes at `ctx`) does not fit one storage binding."""
    limit = device.max_binding_size
    over = [(w, b) for w, (_, b) in sizes.items() if b > limit]
    if over:
        w, need = max(over, key=lambda o: o[1])
        whose = (
            "its full-attention layers"
            if w is None
            else f"its layers with a {w}-position window (the window and a {prefill_chunk}-token prefill step)"
        )
        what = f"{need} bytes of KV cache per layer for K (and as much for V) in {whose}"
    else:  # only the block table (one u32 per block of a sequence) is past the limit
        what = f"a KV cache block table of {4 * -(-ctx // BLOCK_SIZE)} bytes"
    head = (
        f"A context window of {ctx} positions for {max_sequences} sequence(s) needs {what}, more than this GPU's "
        f"largest storage buffer binding ({limit} bytes): "
    )
    if fit < BLOCK_SIZE:  # not one block per sequence (context_window=None asks for one)
        return (
            head
            + f"not even {BLOCK_SIZE} positions fit"
            + (", load with fewer max_sequences." if max_sequences > 1 else ".")
        )
    return (
        head
        + f"load with context_window <= {fit}"
        + (" or fewer max_sequences" if max_sequences > 1 else "")
        + ", or context_window=None to fit the GPU."
    )


def _is_int(v: Any, least: int) -> bool:
    """v is an int (not a bool, a float or a numeric string) of at least `least`."""
    return isinstance(v, int) and not isinstance(v, bool) and v >= least


_UNLOADED = "The engine was unloaded (unload()) while this request ran or waited: load a model again to generate."


def _token_ids(ids: Any, vocab_size: int) -> list[int]:
    """A prompt's token ids as a list of ints in [0, vocab_size) (numpy ints taken): an id past the
    embedding table would read whatever lies after it on the GPU."""
    if isinstance(ids, (str, bytes)) or not hasattr(ids, "__len__"):
        raise RequestError(
            f"The prompt must be a list of token ids, got {type(ids).__name__} (encode text with engine.tokenizer)."
        )
    out = []
    for t in ids:
        try:
            i = operator.index(t)  # int and numpy integers; not float, str or bool
        except TypeError:
            i = None
        if i is None or isinstance(t, bool) or not 0 <= i < vocab_size:
            raise RequestError(f"The prompt's token id {t!r} is not in this vocabulary (integers 0..{vocab_size - 1}).")
        out.append(i)
    return out


def _stop_list(stop: Any) -> list[str]:
    """`stop` as OpenAI takes it: a string or a list of strings (a str is one stop, not its characters)."""
    if stop is None:
        return []
    if isinstance(stop, str):
        return [stop]
    if not isinstance(stop, (list, tuple)) or not all(isinstance(s, str) for s in stop):
        raise RequestError(f"stop must be a string or a list of strings, got {stop!r}.")
    return list(stop)


def _split_stop(text: str, stops: list[str]) -> tuple[str, str, bool]:
    """(text safe to emit, text held back, stop hit). Holds back the longest tail that could still
    grow into a stop string, so a stop string is never half-emitted."""
    if not stops:
        return text, "", False
    first = min((i for i in (text.find(s) for s in stops) if i >= 0), default=-1)
    if first >= 0:
        return text[:first], "", True
    keep = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), keep, -1):
            if s.startswith(text[-k:]):
                keep = k
                break
    return text[: len(text) - keep], text[len(text) - keep :], False
