"""Browser backend: `navigator.gpu` driven from Python in Pyodide through its JS FFI.

FFI facts this file relies on (see shared/PLATFORM.md): JS null arrives as `jsnull`; writeBuffer
needs a JS view, which `getBuffer()` gives zero-copy; a mapped range must be copied before unmap;
each Python->JS call costs ~1 us, so a token's dispatches are recorded into one pass.
"""

from __future__ import annotations

import json
import re
import time
from typing import Any, Sequence

from ..errors import DEVICE_LOST_ADVICE, DeviceLostError, GPUCommandError, GPUUnavailableError, ShaderError
from .base import SGMAT_FEATURE, AdapterInfo, BindGroup, Buffer, Device, Kernel, Program, Recorder, align_up

import js  # type: ignore  # only importable under Pyodide
from pyodide.ffi import create_proxy, jsnull, to_js  # type: ignore

_LIMITS = (
    "maxStorageBufferBindingSize",
    "maxBufferSize",
    "maxComputeWorkgroupStorageSize",
    "maxComputeInvocationsPerWorkgroup",
    "maxStorageBuffersPerShaderStage",
    "maxComputeWorkgroupSizeX",
    "maxComputeWorkgroupsPerDimension",
)
_FEATURES = ("shader-f16", "subgroups", "timestamp-query")


def _js(obj):
    """Python dict/list -> plain JS object/array (JsProxies inside pass through)."""
    return to_js(obj, dict_converter=js.Object.fromEntries)


# Replays a captured Program inside JS: a decode token's ~400 dispatches then cost one FFI call.
_REPLAY_JS = (
    "for (const c of cmds) { pass.setPipeline(c[0]); pass.setBindGroup(0, c[1]); "
    "pass.dispatchWorkgroups(c[2], c[3], c[4]); }"
)


def _make_js_replay():
    try:
        return js.Function.new("pass", "cmds", _REPLAY_JS)
    except Exception:  # a Content-Security-Policy without 'unsafe-eval' forbids Function(); fall back
        return None


# Bind group 0 of a kernel, read from its WGSL: `@group(0) @binding(i) var<storage, read> ...`.
_BINDING = re.compile(r"@group\(0\)\s*@binding\((\d+)\)\s*var<\s*(storage|uniform)\s*(?:,\s*(read_write|read)\s*)?>")
_BUFFER_TYPE = {
    ("storage", "read"): "read-only-storage",
    ("storage", ""): "read-only-storage",
    ("storage", "read_write"): "storage",
    ("uniform", ""): "uniform",
}


def bindings(source: str) -> list[tuple[int, str]]:
    """(binding, GPUBufferBindingType) of every buffer the WGSL declares in group 0."""
    code = re.sub(r"//[^\n]*", "", source)
    return sorted((int(i), _BUFFER_TYPE[(space, access or "")]) for i, space, access in _BINDING.findall(code))


def _layout_entries(source: str) -> list[dict]:
    """Bind group 0's layout entries of a kernel (GPUShaderStage.COMPUTE is 4)."""
    return [{"binding": i, "visibility": 4, "buffer": {"type": t}} for i, t in bindings(source)]


def _snake(name: str) -> str:
    return "".join("_" + c.lower() if c.isupper() else c for c in name)


class BrowserRecorder(Recorder):
    def __init__(self, device: "BrowserDevice") -> None:
        self._dev = device
        self._enc = device.raw.createCommandEncoder()
        self._pass: Any = None  # the open GPUComputePassEncoder (a JS object)

    def dispatch(self, bind_group: BindGroup, x: int, y: int = 1, z: int = 1) -> None:
        if self._pass is None:
            self._pass = self._enc.beginComputePass()
        p = self._pass
        p.setPipeline(bind_group.kernel.pipeline or self._dev.pipeline(bind_group.kernel))
        p.setBindGroup(0, bind_group.handle)
        p.dispatchWorkgroups(x, y, z)

    def copy_buffer(self, src: Buffer, src_offset: int, dst: Buffer, dst_offset: int, size: int) -> None:
        if self._pass is not None:
            self._pass.end()
            self._pass = None
        self._enc.copyBufferToBuffer(src.handle, src_offset, dst.handle, dst_offset, size)

    def replay(self, program: Program) -> None:
        replay = self._dev.js_replay
        if replay is None:  # no JS helper (e.g. a CSP without 'unsafe-eval'): one FFI call per command
            return super().replay(program)
        if self._pass is None:
            self._pass = self._enc.beginComputePass()
        if program.native is None:
            pipe = self._dev.pipeline
            program.native = _js(
                [[bg.kernel.pipeline or pipe(bg.kernel), bg.handle, x, y, z] for bg, x, y, z in program.commands]
            )
        replay(self._pass, program.native)

    def finish(self):
        if self._pass is not None:
            self._pass.end()
            self._pass = None
        return self._enc.finish()

    def submit(self) -> None:
        self._dev.submit_commands(self.finish())


class BrowserDevice(Device):
    subgroups_directive = "enable subgroups;"  # Chrome requires it before subgroup builtins
    subgroup_min_size = 0  # the adapter's smallest subgroup where subgroups were granted (planner.subgroup_min_size)
    # Dawn's subgroup matrices (SGMAT_FEATURE): (component, result, M, N, K) of each config offered, and the
    # adapter's (subgroupMinSize, subgroupMaxSize) (planner.Adapter.subgroup_matrix)
    subgroup_matrix_configs: frozenset[tuple[str, str, int, int, int]] = frozenset()
    subgroup_sizes: tuple[int, int] = (0, 0)
    _rejected: str | None = None  # the first uncaptured error since the last readback (_on_uncaptured)
    # Set by create() (JS objects are Any to Python)
    raw: Any  # the GPUDevice
    wgsl_language_features: frozenset[str]
    js_replay: Any
    _lost_reason: str | None
    _usage: int
    _read_usage: int
    _staging: dict[int, Any]
    _pending_scopes: list[tuple[str, str, Any]]
    _queue: Any
    _submit: Any
    _request: dict  # what requestDevice was asked for, with the power preference (the start-up record's key)
    _ahead: dict[str, Any]  # WGSL source -> {layout, pipeline: Promise} compiling since the page started
    _compiling: list[tuple[Kernel, Any]]  # kernels made from _ahead whose pipeline promise is not awaited yet
    _remembered: bool

    @classmethod
    async def create(
        cls, power_preference: str = "high-performance", use_subgroups: bool | None = None
    ) -> "BrowserDevice":
        """use_subgroups: request the adapter's subgroups feature where it is offered; None: on GPU
        adapters only, as NativeDevice (CPU adapters' kernels do not use them)."""
        gpu = getattr(js.navigator, "gpu", None)
        if gpu is None or gpu is jsnull:
            raise GPUUnavailableError(
                "This browser has no WebGPU (navigator.gpu is missing). Use a recent Chrome/Edge, "
                "or start Chromium with --enable-unsafe-webgpu."
            )
        # A returning visit: worker.js requested the device and began compiling the kernels this model's
        # first token needed last time (webllm_py's start-up record) while Pyodide started.
        take = getattr(js, "webllmTakeStartKernels", None)
        ahead = await take() if take is not None else None
        ahead = None if ahead is jsnull else ahead
        adapter = (
            ahead.adapter if ahead is not None else await gpu.requestAdapter(_js({"powerPreference": power_preference}))
        )
        if adapter is None or adapter is jsnull:
            raise GPUUnavailableError(
                "navigator.gpu.requestAdapter() returned null: WebGPU is disabled or the GPU is blocklisted."
            )
        self = cls()
        info = adapter.info
        self.info = AdapterInfo(
            backend="browser",
            vendor=str(info.vendor),
            architecture=str(info.architecture),
            description=str(info.description),
            is_fallback=bool(getattr(info, "isFallbackAdapter", False) or getattr(adapter, "isFallbackAdapter", False)),
        )
        have = {str(f) for f in getattr(js.Array, "from")(adapter.features)}
        if use_subgroups is None:
            use_subgroups = not self.info.is_fallback
        request = [f for f in _FEATURES if f in have and (use_subgroups or f != "subgroups")]
        # Tensor cores (matmul_sgmat.wgsl.j2), where offered: Dawn with allow_unsafe_apis (Chrome's
        # "Unsafe WebGPU Support"), never default Chrome. Its kernels also need `subgroups` (subgroup_id),
        # granted with it; the other kernels' use of subgroups stays as use_subgroups says.
        self.subgroup_matrix_configs = frozenset()
        self.subgroup_sizes = (
            int(getattr(info, "subgroupMinSize", 0) or 0),
            int(getattr(info, "subgroupMaxSize", 0) or 0),
        )
        granted = list(request)
        if SGMAT_FEATURE in have and "subgroups" in have:
            granted += [SGMAT_FEATURE] + ([] if "subgroups" in request else ["subgroups"])
            self.subgroup_matrix_configs = frozenset(
                (str(c.componentType), str(c.resultComponentType), int(c.M), int(c.N), int(c.K))
                for c in getattr(js.Array, "from")(getattr(info, "subgroupMatrixConfigs", None) or js.Array.new())
            )
            request.append(SGMAT_FEATURE)
        # every limit at the adapter's maximum: matmul_sgmat's tiles need more than the default 16 KiB
        # of workgroup memory (maxComputeWorkgroupStorageSize)
        limits = {k: getattr(adapter.limits, k) for k in _LIMITS}
        self._request = {
            "powerPreference": power_preference,
            "requiredFeatures": granted,
            "requiredLimits": {k: int(v) for k, v in limits.items()},
        }
        self._ahead, self._compiling, self._remembered = {}, [], False
        if ahead is not None and ahead.request.to_py() == self._request:
            self.raw = ahead.device
            self._ahead = ahead.kernels.to_py(depth=1)  # a JS Map -> {source: JS {layout, pipeline}}
        else:
            if ahead is not None:  # made for another device request (e.g. the browser's adapter changed)
                ahead.device.destroy()
                adapter = await gpu.requestAdapter(_js({"powerPreference": power_preference}))  # that one is used up
            self.raw = await adapter.requestDevice(_js({"requiredFeatures": granted, "requiredLimits": limits}))
        self.features = frozenset(request)
        if "subgroups" in request:
            # GPUAdapterInfo.subgroupMinSize (Chrome/Dawn, with the subgroups feature): the staged matvec's
            # teams reduce through subgroup shuffles only where a team fits the smallest subgroup
            self.subgroup_min_size = int(getattr(info, "subgroupMinSize", 0) or 0)
        # WGSL language features (e.g. packed_4x8_integer_dot_product, which linear.py's staged matvec
        # `requires`): Chrome lists them on navigator.gpu; a browser without the set has none of them.
        wgsl = getattr(gpu, "wgslLanguageFeatures", None)
        self.wgsl_language_features = (
            frozenset(str(f) for f in getattr(js.Array, "from")(wgsl))
            if wgsl is not None and wgsl is not jsnull
            else frozenset()
        )
        self.limits = {_snake(k): int(getattr(self.raw.limits, k)) for k in _LIMITS}
        self._lost_reason = None
        self.raw.lost.then(create_proxy(self._on_lost))
        # A command buffer the GPU rejects at submit (a grid past a limit, a binding too small) is
        # dropped with only an "uncaptured error" event: kept here and raised at the next readback, so
        # its missing results never pass for output.
        self._rejected = None
        self.raw.onuncapturederror = create_proxy(self._on_uncaptured)
        u = js.GPUBufferUsage
        self._usage = u.STORAGE | u.COPY_DST | u.COPY_SRC
        if self.info.is_fallback:  # CPU matvecs bind x as a uniform (linear.py, matvec_rows.wgsl.j2)
            self._usage |= u.UNIFORM
        self._read_usage = u.MAP_READ | u.COPY_DST
        self._staging = {}
        self._pending_scopes = []
        self.js_replay = _make_js_replay()
        self._queue = self.raw.queue
        try:
            self._submit = js.Function.new("q", "cb", "q.submit([cb]);")
        except Exception:  # a Content-Security-Policy without 'unsafe-eval' (as _make_js_replay)
            self._submit = None
        return self

    def _on_lost(self, info) -> None:
        self._lost_reason = f"{info.reason}: {info.message}"

    def _on_uncaptured(self, event) -> None:
        if self._rejected is None:
            self._rejected = str(getattr(event.error, "message", event.error))

    def check_lost(self) -> None:
        if self._lost_reason is not None:
            raise DeviceLostError(f"The GPU device was lost ({self._lost_reason}). " + DEVICE_LOST_ADVICE)

    # -- kernels ----------------------------------------------------------------------------------
    # Pipelines are created on first use, not when a model asks for its kernels: SwiftShader
    # compiles them one after another (~0.2-1.3 s each for SmolLM2), so the first token should wait
    # only for the ones its prefill and sampling record; decode-only ones (matvecs, decode attention)
    # compile when the first decode step is recorded. Bind groups need no pipeline for that: each
    # kernel's bind group layout is declared from its WGSL instead of taken from an "auto" pipeline.
    def _make_kernel(self, source: str, label: str) -> Kernel:
        ahead = self._ahead.pop(source, None)
        if ahead is not None:  # compiling since the page started: kernels_ready() awaits it
            kernel = Kernel(None, source, label, ahead.layout)
            self._compiling.append((kernel, ahead.pipeline))
            self.kernels_ahead += 1
            return kernel
        layout = self.raw.createBindGroupLayout(_js({"label": label, "entries": _layout_entries(source)}))
        return Kernel(None, source, label, layout)

    def pipeline(self, kernel: Kernel):
        """The kernel's compute pipeline, created now if it was not yet (see _make_kernel; one compiling
        ahead whose promise was not awaited is created again rather than waited for)."""
        if kernel.pipeline is None:
            kernel.pipeline = self._create_pipeline(kernel.source, kernel.label, kernel.layout)
        return kernel.pipeline

    # Start-up kernels: on SwiftShader each pipeline takes ~0.01-0.65 s to compile (1.6-2.9 s for SmolLM2's
    # first token), one after another in the GPU process, so a returning visit compiles the ones its first
    # token needed last time from the page's start, while Pyodide starts and the model loads (worker.js
    # keeps the record in Cache Storage, keyed by the runtime's wheels, the model and the load options).
    async def kernels_ready(self, kernels=None) -> None:
        compiling = [c for c in self._compiling if kernels is None or c[0] in kernels]
        self._compiling = [c for c in self._compiling if not (kernels is None or c[0] in kernels)]
        t = time.perf_counter()
        for kernel, promise in compiling:
            try:
                pipeline = await promise
            except Exception as e:  # GPUPipelineError: the same source failed to compile
                raise ShaderError(
                    f"kernel '{kernel.label}' failed to compile: {e}\n--- source ---\n{kernel.source}"
                ) from e
            if kernel.pipeline is None:
                kernel.pipeline = pipeline
        if compiling:
            self.kernels_ahead_wait_s += time.perf_counter() - t

    @property
    def kernels_compiling(self) -> bool:
        return bool(self._compiling)

    def first_token_done(self) -> None:
        store = getattr(js, "webllmStoreStartKernels", None)
        if self._remembered or store is None:
            return
        self._remembered = True
        made = [k for k in self.kernels_made if k.pipeline is not None]
        if len(made) == self.kernels_ahead:  # all from the record this start took: it holds them already
            return
        kernels = [{"label": k.label, "source": k.source, "entries": _layout_entries(k.source)} for k in made]
        store(json.dumps({"request": self._request, "kernels": kernels}))

    def _create_pipeline(self, source: str, label: str, layout=None):
        self.raw.pushErrorScope("validation")
        module = self.raw.createShaderModule(_js({"code": source, "label": label}))
        pl = "auto" if layout is None else self.raw.createPipelineLayout(_js({"bindGroupLayouts": [layout]}))
        pipeline = self.raw.createComputePipeline(
            _js({"layout": pl, "label": label, "compute": {"module": module, "entryPoint": "main"}})
        )
        self._pending_scopes.append((label, source, self.raw.popErrorScope()))
        return pipeline

    async def check_errors(self) -> None:
        """Await the validation scopes of pipelines created so far; raise ShaderError on the first failure."""
        pending, self._pending_scopes = self._pending_scopes, []
        for label, source, promise in pending:
            err = await promise
            if err is not None and err is not jsnull:
                raise ShaderError(f"kernel '{label}' failed to compile: {err.message}\n--- source ---\n{source}")

    # -- buffers ----------------------------------------------------------------------------------
    def create_buffer(self, size: int, label: str = "") -> Buffer:
        self.check_lost()
        size = max(4, align_up(int(size), 4))
        self.check_buffer_size(size, label)
        return Buffer(self.raw.createBuffer(_js({"size": size, "usage": self._usage, "label": label})), size, label)

    def write_buffer(self, buffer: Buffer, data, offset: int = 0) -> None:
        # Zero-copy: expose the Python buffer to JS as a typed-array view for the duration of the call.
        px = create_proxy(memoryview(data).cast("B"))
        view = px.getBuffer("u8")
        try:
            self.raw.queue.writeBuffer(buffer.handle, offset, view.data)
        finally:
            view.release()
            px.destroy()

    async def read_buffer(self, buffer: Buffer, offset: int = 0, size: int | None = None) -> bytes:
        self.check_lost()
        size = buffer.size - offset if size is None else size
        padded = align_up(size, 4)
        staging = self._staging.pop(padded, None) or self.raw.createBuffer(
            _js({"size": padded, "usage": self._read_usage})
        )
        enc = self.raw.createCommandEncoder()
        enc.copyBufferToBuffer(buffer.handle, offset, staging, 0, padded)
        self.raw.queue.submit(_js([enc.finish()]))
        try:
            await staging.mapAsync(js.GPUMapMode.READ)
        except Exception as e:
            self.check_lost()
            raise DeviceLostError(f"reading back from the GPU failed: {e}") from e
        data = js.Uint8Array.new(staging.getMappedRange()).to_bytes()
        staging.unmap()
        self._staging[padded] = staging  # reused: token-id readbacks have the same size every step
        await self._after_readback()
        return data[:size]

    async def _after_readback(self) -> None:
        """Raise what the GPU reported asynchronously about the work a readback waited for."""
        rejected = self._rejected
        self._rejected = None
        if self._pending_scopes:  # pipelines created on first use since the last check: report them (a
            await self.check_errors()  # ShaderError first: a pipeline that failed to build explains the rest)
        if rejected is not None:
            raise GPUCommandError(f"the GPU rejected commands submitted before this readback: {rejected}")

    def create_readback(self, size: int, label: str = "") -> Buffer:
        self.check_lost()
        size = max(4, align_up(int(size), 4))
        return Buffer(
            self.raw.createBuffer(_js({"size": size, "usage": self._read_usage, "label": label})), size, label
        )

    async def map_read(self, buffer: Buffer, size: int | None = None) -> bytes:
        self.check_lost()
        size = buffer.size if size is None else size
        try:
            await buffer.handle.mapAsync(js.GPUMapMode.READ, 0, align_up(size, 4))
        except Exception as e:
            self.check_lost()
            raise DeviceLostError(f"reading back from the GPU failed: {e}") from e
        except BaseException:  # cancelled: unmap() aborts the pending map, so later steps may use the buffer
            buffer.handle.unmap()
            raise
        data = js.Uint8Array.new(buffer.handle.getMappedRange(0, align_up(size, 4))).to_bytes()
        buffer.handle.unmap()
        await self._after_readback()
        return data[:size]

    def bind(self, kernel: Kernel, buffers: Sequence[Buffer | tuple[Buffer, int, int]]) -> BindGroup:
        entries = []
        for i, b in enumerate(buffers):
            buf, off, size = (b, 0, b.size) if isinstance(b, Buffer) else b
            entries.append({"binding": i, "resource": {"buffer": buf.handle, "offset": off, "size": size}})
        layout = kernel.layout if kernel.layout is not None else kernel.pipeline.getBindGroupLayout(0)
        handle = self.raw.createBindGroup(_js({"layout": layout, "entries": entries}))
        return BindGroup(handle, kernel, tuple(buffers))

    def recorder(self) -> Recorder:
        return BrowserRecorder(self)

    def submit_commands(self, command_buffer) -> None:
        self.check_lost()
        if self._submit is not None:
            self._submit(self._queue, command_buffer)  # one FFI call: a decode token's critical path
        else:
            self._queue.submit(js.Array.of(command_buffer))

    def destroy(self) -> None:
        self.raw.destroy()
