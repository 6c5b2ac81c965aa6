"""Native backend: PyPI `wgpu` (wgpu-py over Vulkan/Metal/D3D12). Used for kernel tests on Mesa
lavapipe (CPU) and for benchmarks on real GPUs. Mirrors browser.py call for call."""

from __future__ import annotations

import asyncio
import os
from contextlib import contextmanager
from typing import Any, Sequence

from ..errors import GPUCommandError, GPUUnavailableError, ShaderError
from .base import AdapterInfo, BindGroup, Buffer, Device, Kernel, Program, Recorder, align_up
from .vulkan_env import quiet_device_select

# Features this runtime uses; wgpu-native names subgroups "subgroup".
FLUSH_BYTES = 64 << 20  # bytes written between flushes of wgpu's staging buffers (write_buffer)

_WANTED = {
    "shader-f16": "shader-f16",
    "subgroup": "subgroups",
    "subgroups": "subgroups",
    "timestamp-query": "timestamp-query",
}


class NativeRecorder(Recorder):
    def __init__(self, device: "NativeDevice") -> None:
        self._dev = device
        self._enc = device.raw.create_command_encoder()
        self._pass = None

    def _compute_pass(self):
        if self._pass is None:
            self._pass = self._enc.begin_compute_pass()
        return self._pass

    def dispatch(self, bind_group: BindGroup, x: int, y: int = 1, z: int = 1) -> None:
        p = self._compute_pass()
        p.set_pipeline(bind_group.kernel.pipeline)
        p.set_bind_group(0, bind_group.handle)
        p.dispatch_workgroups(x, y, z)

    def replay(self, program: Program) -> None:
        """A captured Program through wgpu-native's C entry points directly. wgpu-py wraps each call in
        Python (error capture around every call, a fresh offsets array per set_bind_group): ~9 us a
        dispatch on a 2-core CI machine, 1.4 us direct; a 1B decode step has 85 (H100: decode +2-4%,
        docs/benchmarks.md). An encoding error is not lost:
        wgpu-core keeps it in the pass and raises it at end()/finish(), which still go through wgpu-py.
        program.native: (pipeline or None where it is the previous dispatch's, bind group, x, y, z) handles;
        program.commands keeps the objects that own them alive."""
        if program.native is None:
            cmds, last = [], None
            for bg, x, y, z in program.commands:
                pipe = bg.kernel.pipeline._internal
                cmds.append((None if pipe == last else pipe, bg.handle._internal, x, y, z))
                last = pipe
            program.native = cmds
        from wgpu.backends.wgpu_native import _api

        lib, no_offsets = _api.lib, _api.ffi.NULL
        set_pipeline = lib.wgpuComputePassEncoderSetPipeline
        set_bind_group = lib.wgpuComputePassEncoderSetBindGroup
        dispatch = lib.wgpuComputePassEncoderDispatchWorkgroups
        h = self._compute_pass()._internal
        for pipe, bg, x, y, z in program.native:
            if pipe is not None:
                set_pipeline(h, pipe)
            set_bind_group(h, 0, bg, 0, no_offsets)
            dispatch(h, x, y, z)

    def copy_buffer(self, src: Buffer, src_offset: int, dst: Buffer, dst_offset: int, size: int) -> None:
        if self._pass is not None:
            self._pass.end()
            self._pass = None
        self._enc.copy_buffer_to_buffer(src.handle, src_offset, dst.handle, dst_offset, size)

    def finish(self):
        with _rejected():
            if self._pass is not None:
                self._pass.end()
                self._pass = None
            return self._enc.finish()

    def submit(self) -> None:
        cb = self.finish()
        with _rejected():
            self._dev.raw.queue.submit([cb])


def trusted_module(raw_device, source: str, label: str):
    """A WGSL module compiled without naga's run-time checks (wgpu-native's
    wgpuDeviceCreateShaderModuleTrusted with WGPUShaderRuntimeChecks_None), which wgpu-py 0.32 does not
    wrap. naga otherwise clamps every dynamic index into a workgroup or private array and counts the
    iterations of every loop (so that a shader cannot loop forever): in a matmul's inner loop both
    are per-element work. Tint (Dawn, Chrome) adds no loop counters, and its robustness transform clamps
    only the indices it cannot prove in range."""
    from wgpu.backends.wgpu_native import _api

    ffi, lib = _api.ffi, _api.lib
    wgsl = _api.new_struct_p("WGPUShaderSourceWGSL *", code=_api.to_c_string_view(source))
    wgsl[0].chain.next = ffi.NULL
    wgsl[0].chain.sType = lib.WGPUSType_ShaderSourceWGSL
    desc = _api.new_struct_p(
        "WGPUShaderModuleDescriptor *",
        nextInChain=ffi.cast("WGPUChainedStruct *", wgsl),
        label=_api.to_c_string_view(label),
    )
    handle = _api.libf.wgpuDeviceCreateShaderModuleTrusted(raw_device._internal, desc, 0)
    if handle == ffi.NULL:
        raise RuntimeError("shader module creation failed")
    return _api.GPUShaderModule(label, handle, raw_device)


@contextmanager
def _rejected():
    """wgpu-py's validation errors of recorded commands as the typed error the browser device raises."""
    import wgpu

    try:
        yield
    except wgpu.GPUValidationError as e:
        raise GPUCommandError(f"the GPU rejected the recorded commands: {e}") from e


class NativeDevice(Device):
    subgroups_directive = ""  # naga enables subgroup builtins by the device feature alone

    def __init__(
        self,
        power_preference: str = "high-performance",
        use_subgroups: bool | None = None,
        max_binding_size: int | None = None,
        spin_reads: bool | None = None,
        shader_checks: bool | None = None,
    ) -> None:
        """use_subgroups: request the adapter's subgroups feature; None: on GPU adapters only (the
        staged matvec's team reduction, linear.py; CPU adapters' kernels do not use them).
        max_binding_size: act as if the adapter bound (and allocated) at most this many bytes per
        buffer, so that tests exercise the row-block split of large matrices with small models.
        spin_reads: poll for a readback here (see read_buffer) instead of wgpu-py's blocking read; None:
        on GPU adapters only (bench --read-spin A/B runs).
        shader_checks: compile kernels with naga's run-time checks (indices into workgroup and private
        arrays clamped, a counter in every loop against infinite loops), as wgpu does by default; False:
        without them (trusted_module). Tint (Dawn, Chrome) adds no loop counters; its robustness transform clamps
        indices too, except where it proves them in range.
        These kernels are this package's own, generated from its templates and tested against numpy with
        every index in range; storage buffers stay guarded by the driver's robust buffer access. None: off
        on GPU adapters (H100, 2026-12-07: 1B decode 1.25x, 1B prefill 1.11x, 8B decode 1.11x; the prompt's
        logits bit-identical, the decode's within 9e-4 of their scale; docs/benchmarks.md), on for CPU
        adapters (lavapipe showed no difference; CI keeps naga's checks). bench --shader-checks 0/1 is the A/B."""
        super().__init__()
        try:
            import wgpu
        except ImportError as e:  # pragma: no cover - depends on the install
            raise GPUUnavailableError("The native backend needs PyPI `wgpu` (pip install 'webllm_py[native]').") from e
        self._wgpu = wgpu
        quiet_device_select(os.environ)  # before wgpu-native makes its Vulkan instance (vulkan_env.py says why)
        try:
            adapter = wgpu.gpu.request_adapter_sync(power_preference=power_preference)
        except Exception as e:
            raise GPUUnavailableError(
                f"No native WebGPU adapter (is a Vulkan driver such as Mesa lavapipe installed?): {e}"
            ) from e
        if adapter is None:
            raise GPUUnavailableError("No native WebGPU adapter (is a Vulkan driver such as Mesa lavapipe installed?)")
        info = adapter.info
        self.info = AdapterInfo(
            backend="native",
            vendor=str(info.get("vendor", "")),
            architecture=str(info.get("architecture", "")),
            description=str(info.get("device", "")) + " " + str(info.get("description", "")),
            is_fallback=str(info.get("adapter_type", "")).lower() == "cpu",
            api=str(info.get("backend_type", "")).lower(),
        )
        have = {f for f in adapter.features}
        if use_subgroups is None:
            use_subgroups = not self.info.is_fallback
        request = [f for f in have if f in _WANTED and (use_subgroups or _WANTED[f] != "subgroups")]
        self.features = frozenset(_WANTED[f] for f in request)
        lim = adapter.limits
        want_limits = {
            k: lim[k]
            for k in (
                "max-storage-buffer-binding-size",
                "max-buffer-size",
                "max-compute-workgroup-storage-size",
                "max-compute-invocations-per-workgroup",
                "max-storage-buffers-per-shader-stage",
            )
            if k in lim
        }
        self.raw = adapter.request_device_sync(required_features=request, required_limits=want_limits)
        self.limits = {k.replace("-", "_"): v for k, v in self.raw.limits.items()}
        self.driver_max_buffer = self.max_buffer_size  # before any emulation
        if max_binding_size:
            for k in ("max_storage_buffer_binding_size", "max_buffer_size"):
                self.limits[k] = min(int(self.limits.get(k, max_binding_size)), int(max_binding_size))
        self._staged = 0  # bytes written since the last submission (write_buffer)
        self._flush_buffer: Buffer | None = None
        self._usage = wgpu.BufferUsage.STORAGE | wgpu.BufferUsage.COPY_DST | wgpu.BufferUsage.COPY_SRC
        if self.info.is_fallback:  # CPU matvecs bind x as a uniform (linear.py, matvec_rows.wgsl.j2)
            self._usage |= wgpu.BufferUsage.UNIFORM
        self._spin_reads = not self.info.is_fallback if spin_reads is None else spin_reads
        self._staging: dict[int, Any] = {}  # readback buffers by size (polled reads)
        self._shader_checks = self.info.is_fallback if shader_checks is None else shader_checks

    def _create_pipeline(self, source: str, label: str):
        try:
            if self._shader_checks:
                module = self.raw.create_shader_module(code=source, label=label)
            else:
                module = trusted_module(self.raw, source, label)
            return self.raw.create_compute_pipeline(
                layout="auto", compute={"module": module, "entry_point": "main"}, label=label
            )
        except Exception as e:
            raise ShaderError(f"kernel '{label}' failed to compile: {e}\n--- source ---\n{source}") from e

    def create_buffer(self, size: int, label: str = "") -> Buffer:
        size = max(4, align_up(int(size), 4))
        self.check_buffer_size(size, label)
        return Buffer(self.raw.create_buffer(size=size, usage=self._usage, label=label), size, label)

    def write_buffer(self, buffer: Buffer, data, offset: int = 0) -> None:
        data = memoryview(data).cast("B")
        self.raw.queue.write_buffer(buffer.handle, offset, data)
        # wgpu keeps each write in a host staging buffer until the next submission has run: a model
        # load (no submission) would hold a whole copy of the weights there. Flush every FLUSH_BYTES.
        self._staged += len(data)
        if self._staged >= FLUSH_BYTES:
            self._staged = 0
            if self._flush_buffer is None:
                self._flush_buffer = self.create_buffer(4, "flush")
            # a blocking read submits the pending writes and waits for them (wgpu-py 0.32's
            # on_submitted_work_done_sync fails to build its callback)
            self.raw.queue.read_buffer(self._flush_buffer.handle, 0, 4)

    async def read_buffer(self, buffer: Buffer, offset: int = 0, size: int | None = None) -> bytes:
        """The bytes once the GPU has written them. Awaits while the GPU works, so other asyncio tasks
        run meanwhile and a cancellation (asyncio.wait_for, Task.cancel) lands here, within one step."""
        size = buffer.size - offset if size is None else size
        if not self._spin_reads or offset % 4 or size % 4:
            # wgpu-py's blocking read, on a worker thread: it waits in wgpuDevicePoll without taking a
            # core from a CPU adapter's kernels. A cancelled caller returns at once; the read finishes unseen.
            return bytes(await asyncio.to_thread(self.raw.queue.read_buffer, buffer.handle, offset, size))
        # GPU adapters: a decode step ends in this read of a few bytes, and the GPU idles until the
        # next step is submitted. wgpu-py's own read waits on its poll thread, which blocks in
        # wgpuDevicePoll until the queue is idle and then hands over: 0.1-0.9 ms a token on the H100.
        # Here this thread polls (non-blocking), giving the event loop a turn between polls, until the
        # map completes; the staging buffer is kept. Not on CPU adapters, whose cores run the kernels.
        staging = self._staging.get(size)
        if staging is None:
            staging = self._staging[size] = self.raw.create_buffer(
                size=size, usage=self._wgpu.BufferUsage.MAP_READ | self._wgpu.BufferUsage.COPY_DST, label="readback"
            )
        encoder = self.raw.create_command_encoder()
        encoder.copy_buffer_to_buffer(buffer.handle, offset, staging, 0, size)
        self.raw.queue.submit([encoder.finish()])
        return await self._polled_map(staging, size, pause=0)

    async def _polled_map(self, staging, size: int, pause: float) -> bytes:
        """Map `staging` (a MAP_READ buffer that submitted work copied into), polling here without
        blocking, and return its first `size` bytes. wgpu-core resolves a map once the submission that
        last used the buffer is done, not the whole queue (wgpu-py's own wait, a blocking poll, waits
        for the queue to idle). `pause`: seconds between polls (0: every event-loop turn)."""
        mapped = staging.map_async("READ_NOSYNC", 0, size)  # the copy that wrote it is the sync
        try:
            await asyncio.sleep(0)  # other tasks' turn while the GPU starts, even when the map is quick
            while mapped._state == "pending":  # wgpu-py 0.32 (pinned) keeps no public poll/state
                self.raw._poll(False)
                if mapped._state == "pending":
                    await asyncio.sleep(pause)
        except BaseException:  # cancelled: finish the map (at most this step) so the buffer can be reused
            mapped.sync_wait()
            staging.unmap()
            raise
        mapped.sync_wait()  # raises if the map failed (a lost device)
        try:
            return bytes(staging.read_mapped(0, size, copy=False))
        finally:
            staging.unmap()

    def create_readback(self, size: int, label: str = "") -> Buffer:
        size = max(4, align_up(int(size), 4))
        usage = self._wgpu.BufferUsage.MAP_READ | self._wgpu.BufferUsage.COPY_DST
        return Buffer(self.raw.create_buffer(size=size, usage=usage, label=label), size, label)

    async def map_read(self, buffer: Buffer, size: int | None = None) -> bytes:
        # CPU adapters: a short sleep between polls leaves the cores to the kernels (a step takes ms there)
        return await self._polled_map(
            buffer.handle, buffer.size if size is None else size, 0 if self._spin_reads else 2e-4
        )

    def bind(self, kernel: Kernel, buffers: Sequence[Buffer | tuple[Buffer, int, int]]) -> BindGroup:
        entries = []
        for i, b in enumerate(buffers):
            buf, off, size = (b, 0, b.size) if isinstance(b, Buffer) else b
            entries.append({"binding": i, "resource": {"buffer": buf.handle, "offset": off, "size": size}})
        layout = kernel.pipeline.get_bind_group_layout(0)
        return BindGroup(self.raw.create_bind_group(layout=layout, entries=entries), kernel, tuple(buffers))

    def recorder(self) -> Recorder:
        return NativeRecorder(self)

    def submit_commands(self, command_buffer) -> None:
        with _rejected():
            self.raw.queue.submit([command_buffer])

    def destroy(self) -> None:
        self.raw.destroy()
