"""One GPU interface (base.Device), two backends: `browser` (Pyodide + navigator.gpu) and `native` (wgpu-py)."""

from __future__ import annotations

import sys

from ..errors import RequestError
from .base import MAX_GROUPS, AdapterInfo, BindGroup, Buffer, Device, Kernel, Program, Recorder

IN_BROWSER = sys.platform == "emscripten"


async def request_device(backend: str | None = None, **options) -> Device:
    """The default backend is `browser` under Pyodide and `native` elsewhere."""
    backend = backend or ("browser" if IN_BROWSER else "native")
    if backend == "browser":
        if not IN_BROWSER:  # its module imports Pyodide's `js`: natively, a ModuleNotFoundError
            raise RequestError("the 'browser' GPU backend runs in Pyodide only: natively use backend='native'")
        from .browser import BrowserDevice

        return await BrowserDevice.create(**options)
    if backend == "native":
        from .native import NativeDevice

        return NativeDevice(**options)
    raise RequestError(f"unknown GPU backend {backend!r}: use 'browser' or 'native'")


__all__ = [
    "MAX_GROUPS",
    "AdapterInfo",
    "BindGroup",
    "Buffer",
    "Device",
    "Kernel",
    "Program",
    "Recorder",
    "request_device",
    "IN_BROWSER",
]
