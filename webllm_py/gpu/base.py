"""The GPU interface the model code is written against, in WebGPU's own words.

Two backends implement it: `browser` (navigator.gpu through Pyodide's FFI) and `native` (PyPI wgpu).
Everything a model needs is here and nothing more:

- buffers: `create_buffer`, `write_buffer` (zero-copy from Python memory), `read_buffer` (async,
  because mapping is a Promise in the browser); `create_readback` + `map_read` to read what a step
  copied into a mappable buffer without waiting for later steps (pipelined decode, engine.py);
- kernels: `kernel(template, **params)` renders a Jinja2 WGSL template with the adapter's features
  filled in and returns a compute pipeline, cached by its rendered source;
- `bind(kernel, *buffers)`: a bind group, created once and reused every token;
- `Recorder`: one command encoder with one compute pass per submit, so a whole token's dispatches
  cost one submit (Python->JS calls are the browser's bottleneck, ~1 us per recorded dispatch).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from .. import kernels
from ..errors import GPUFeatureError, ModelTooLargeError


@dataclass(frozen=True)
class AdapterInfo:
    backend: str  # "native" or "browser"
    vendor: str = ""
    architecture: str = ""
    description: str = ""
    is_fallback: bool = False
    api: str = ""  # the native API under wgpu-native ("vulkan", "metal", "d3d12"); "" in browsers


@dataclass(eq=False)
class Buffer:
    handle: Any  # GPUBuffer of the backend
    size: int
    label: str = ""

    def destroy(self) -> None:
        self.handle.destroy()


@dataclass(eq=False)
class Kernel:
    pipeline: Any  # GPUComputePipeline; None until first use where the backend creates it lazily
    source: str
    label: str = ""
    layout: Any = None  # bind group 0's layout, where the backend declares it (browser)


@dataclass(eq=False)
class BindGroup:
    handle: Any
    kernel: Kernel
    buffers: tuple = field(default=())  # kept alive as long as the bind group


class Recorder(ABC):
    """Records dispatches into one compute pass; `submit()` ends the pass and submits the encoder."""

    @abstractmethod
    def dispatch(self, bind_group: BindGroup, x: int, y: int = 1, z: int = 1) -> None: ...

    @abstractmethod
    def copy_buffer(self, src: Buffer, src_offset: int, dst: Buffer, dst_offset: int, size: int) -> None:
        """Buffer-to-buffer copy, ordered with the dispatches around it (ends and reopens the pass)."""

    @abstractmethod
    def submit(self) -> None: ...

    def finish(self) -> Any:
        """End recording without submitting: the command buffer, for Device.submit_commands (the
        engine encodes the next decode step while the GPU runs this one)."""
        raise NotImplementedError(f"{type(self).__name__} cannot hand out its command buffer")

    def replay(self, program: "Program") -> None:
        """Record a captured sequence of dispatches (see Device.capture)."""
        for bind_group, x, y, z in program.commands:
            self.dispatch(bind_group, x, y, z)

    def __enter__(self) -> "Recorder":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.submit()


class Program:
    """A fixed sequence of dispatches, captured once and replayed every step (a decode token's
    work is the same every token: only the contents of the step buffer change). Backends may
    attach a faster form (`native`): the browser keeps it as one JS array, so a token costs one
    Python->JS call instead of three per dispatch."""

    def __init__(self, commands: list[tuple[BindGroup, int, int, int]]):
        self.commands = commands
        self.native: Any = None


class _CaptureRecorder(Recorder):
    def __init__(self) -> None:
        self.commands: list[tuple[BindGroup, int, int, int]] = []

    def dispatch(self, bind_group: BindGroup, x: int, y: int = 1, z: int = 1) -> None:
        self.commands.append((bind_group, x, y, z))

    def copy_buffer(self, *args) -> None:
        raise NotImplementedError("a captured Program holds dispatches only")

    def submit(self) -> None:
        pass


class _KernelsRecorder(Recorder):
    """Keeps only which kernels a recording dispatches (Device.kernels_of)."""

    def __init__(self) -> None:
        self.kernels: set[Kernel] = set()

    def dispatch(self, bind_group: BindGroup, x: int, y: int = 1, z: int = 1) -> None:
        self.kernels.add(bind_group.kernel)

    def copy_buffer(self, *args) -> None:
        pass

    def submit(self) -> None:
        pass


MAX_GROUPS = 65535  # WebGPU's default maxComputeWorkgroupsPerDimension: a larger grid spills into y/z or strides
# Dawn's tensor-core feature (WGSL `enable chromium_experimental_subgroup_matrix;`): offered with
# allow_unsafe_apis only; a device lists it in `features` and its configs in `subgroup_matrix_configs`.
SGMAT_FEATURE = "chromium-experimental-subgroup-matrix"


class Device(ABC):
    """A WebGPU device with the features the kernels care about."""

    info: AdapterInfo
    features: frozenset[str]
    limits: dict[str, int]

    # Chrome requires `enable subgroups;` before subgroup builtins; native wgpu (naga) rejects the
    # directive and enables subgroups by the device feature alone. Backends set this.
    subgroups_directive: str = ""
    kernels_ahead = 0  # kernels whose pipelines were compiled ahead of this load (BrowserDevice)
    kernels_ahead_wait_s = 0.0  # how long steps waited for them to finish compiling

    def __init__(self) -> None:
        self._pipelines: dict[tuple[str, str], Kernel] = {}

    # -- features ---------------------------------------------------------------------------------
    @property
    def has_f16(self) -> bool:
        return "shader-f16" in self.features

    @property
    def has_subgroups(self) -> bool:
        return "subgroups" in self.features

    def require(self, feature: str) -> None:
        if feature not in self.features:
            raise GPUFeatureError(
                f"This GPU adapter ({self.info.vendor} {self.info.architecture}) lacks the WebGPU "
                f"feature '{feature}'. Choose a model/kernel variant that does not need it."
            )

    @property
    def max_buffer_size(self) -> int:
        """The largest buffer `limits` allow (WebGPU's default, 256 MiB, where the adapter says nothing)."""
        return int(self.limits.get("max_buffer_size", 256 << 20))

    @property
    def max_binding_size(self) -> int:
        """The largest buffer one storage binding can hold: the binding limit, or the buffer limit if lower."""
        return min(int(self.limits.get("max_storage_buffer_binding_size", 128 << 20)), self.max_buffer_size)

    driver_max_buffer: int | None = None  # the driver's own limit where `limits` emulate a smaller adapter

    def check_buffer_size(self, size: int, label: str) -> None:
        """A buffer over the driver's max_buffer_size fails there with a validation error (a huge
        prefill_chunk's scratch did): say which buffer, and what to lower, before asking for it."""
        limit = self.driver_max_buffer or self.max_buffer_size
        if size > limit:
            raise ModelTooLargeError(
                f"Buffer '{label}' needs {size} bytes, more than this adapter's largest buffer ({limit} bytes): "
                "load the engine with a smaller prefill_chunk or context_window, or use a smaller model."
            )

    # -- kernels ----------------------------------------------------------------------------------
    def kernel(self, template: str, label: str = "", **params: Any) -> Kernel:
        """Render `shaders/<template>` with `params` plus the adapter's features; cached by source.
        Every template may read `cpu_adapter` (this adapter is a CPU: lavapipe, SwiftShader), for
        forms that suit CPU drivers (no barriers, less unrolling); a caller may pass it to force one."""
        if params.get("f16"):
            self.require("shader-f16")
        if params.get("subgroups"):
            self.require("subgroups")
        params.setdefault("cpu_adapter", self.info.is_fallback)
        source = kernels.render(template, subgroups_directive=self.subgroups_directive, **params)
        key = (source, "main")
        k = self._pipelines.get(key)
        if k is None:
            k = self._make_kernel(source, label or template)
            self._pipelines[key] = k
        return k

    def _make_kernel(self, source: str, label: str) -> Kernel:
        return Kernel(self._create_pipeline(source, label), source, label)

    @property
    def kernels_made(self) -> list[Kernel]:
        """The kernels rendered so far (bench reports which ones a run took)."""
        return list(self._pipelines.values())

    @abstractmethod
    def _create_pipeline(self, source: str, label: str) -> Any: ...

    async def check_errors(self) -> None:
        """Raise ShaderError for pipelines that failed to build. Natively creation raises at once;
        the browser reports validation errors asynchronously, so it overrides this."""

    async def kernels_ready(self, kernels: set[Kernel] | None = None) -> None:
        """Wait for the pipelines a backend compiles ahead of their first use (the browser's start-up
        kernels, see BrowserDevice), or for those of them in `kernels`; Engine awaits this before
        recording a step."""

    @property
    def kernels_compiling(self) -> bool:
        """Some kernels are still compiling ahead of their first use (kernels_ready)."""
        return False

    def kernels_of(self, record: Callable[[Recorder], None]) -> set[Kernel]:
        """The kernels `record` dispatches, recorded against a recorder that encodes nothing."""
        rec = _KernelsRecorder()
        record(rec)
        return rec.kernels

    def first_token_done(self) -> None:
        """The first token was sampled: a backend that compiles kernels ahead on a later start
        remembers the ones built so far (BrowserDevice)."""

    # -- buffers ----------------------------------------------------------------------------------
    @abstractmethod
    def create_buffer(self, size: int, label: str = "") -> Buffer:
        """A storage buffer that can also be copied to and from; `size` is rounded up to 4 bytes."""

    @abstractmethod
    def write_buffer(self, buffer: Buffer, data, offset: int = 0) -> None:
        """Queue a write of a bytes-like object (len a multiple of 4) into `buffer` at `offset`."""

    @abstractmethod
    async def read_buffer(self, buffer: Buffer, offset: int = 0, size: int | None = None) -> bytes:
        """Wait for submitted work, then return `size` bytes of `buffer` from `offset`."""

    def create_readback(self, size: int, label: str = "") -> Buffer:
        """A small buffer the host maps (MAP_READ | COPY_DST, not storage): a Recorder copies results
        into it at the end of a step, and `map_read` reads them without another submission."""
        raise NotImplementedError(f"{type(self).__name__} has no readback buffers")

    async def map_read(self, buffer: Buffer, size: int | None = None) -> bytes:
        """The first `size` bytes of a create_readback buffer once the submitted work that wrote it has
        run; work submitted after it may still be running (the engine reads a decode step's token while
        the next step runs). The buffer is unmapped again before this returns, also when cancelled."""
        raise NotImplementedError(f"{type(self).__name__} has no readback buffers")

    def buffer_from(self, data, label: str = "") -> Buffer:
        buf = self.create_buffer(len(memoryview(data).cast("B")), label)
        self.write_buffer(buf, pad4(data))
        return buf

    # -- recording --------------------------------------------------------------------------------
    @abstractmethod
    def bind(self, kernel: Kernel, buffers: Sequence[Buffer | tuple[Buffer, int, int]]) -> BindGroup:
        """Bind group 0 of `kernel`: binding i gets buffers[i] (whole, or (buffer, offset, size))."""

    @abstractmethod
    def recorder(self) -> Recorder: ...

    def submit_commands(self, command_buffer: Any) -> None:
        """Submit a command buffer from Recorder.finish() (each one at most once)."""
        raise NotImplementedError(f"{type(self).__name__} cannot submit finished command buffers")

    def capture(self, record: Callable[[Recorder], None]) -> Program:
        """Run `record` against a capturing recorder and return the dispatches as a replayable Program."""
        cap = _CaptureRecorder()
        record(cap)
        return Program(cap.commands)

    def run(self, kernel: Kernel, buffers: Sequence[Buffer], x: int, y: int = 1, z: int = 1) -> None:
        """One dispatch in its own submit: convenient for tests and one-off work, not for decode."""
        with self.recorder() as rec:
            rec.dispatch(self.bind(kernel, buffers), x, y, z)

    @abstractmethod
    def destroy(self) -> None: ...


def pad4(data) -> memoryview:
    """A byte view whose length is a multiple of 4 (WebGPU's writeBuffer requirement)."""
    mv = memoryview(data).cast("B")
    if len(mv) % 4:
        mv = memoryview(bytes(mv) + b"\0" * (4 - len(mv) % 4))
    return mv


def align_up(n: int, a: int) -> int:
    return (n + a - 1) // a * a
