"""Where model bytes come from: one small interface, three implementations.

A `ByteSource` answers `read(offset, n)` for header parsing (small ranges copied into Python) and
`upload(device, buffer, src_offset, n, dst_offset)` for tensor data, which should go from the
file straight into a GPU buffer without passing through a Python `bytes` object where the
platform allows it (a JS Uint8Array in the browser; natively, chunks read from the file).

WebGPU's writeBuffer needs sizes and offsets that are multiples of 4: uploads pad the tail with
zeros. Large ranges are uploaded in chunks so the extra memory in flight stays small.
"""

from __future__ import annotations

import os
import stat
import threading
from typing import Any, Protocol, runtime_checkable

from ..errors import ModelFormatError, RequestError

UPLOAD_CHUNK = 32 << 20  # bytes per writeBuffer call for large tensors


@runtime_checkable
class ByteSource(Protocol):
    size: int

    def read(self, offset: int, n: int) -> bytes: ...

    def upload(self, device: Any, buffer: Any, src_offset: int, n: int, dst_offset: int = 0) -> None: ...


def _check_range(source: ByteSource, offset: int, n: int) -> None:
    if offset < 0 or n < 0 or offset + n > source.size:
        raise ModelFormatError(
            f"read of {n} bytes at offset {offset} runs past the end of the data ({source.size} bytes): "
            "the file is truncated or corrupt; download it again."
        )


def _check_upload(device: Any, buffer: Any, n: int, dst_offset: int) -> None:
    if dst_offset % 4:
        raise ValueError(f"upload destination offset {dst_offset} is not a multiple of 4")
    if dst_offset + ((n + 3) & ~3) > buffer.size:
        raise ValueError(
            f"upload of {n} bytes at {dst_offset} does not fit buffer '{buffer.label}' ({buffer.size} bytes)"
        )


def _upload_views(device: Any, buffer: Any, view: memoryview, dst_offset: int, chunk: int) -> None:
    """writeBuffer `view` in chunks (multiples of 4 bytes); the tail is zero-padded to 4."""
    n = len(view)
    body = n - n % 4
    pos = 0
    while pos < body:
        m = min(chunk, body - pos)
        device.write_buffer(buffer, view[pos : pos + m], dst_offset + pos)
        pos += m
    if n % 4:
        device.write_buffer(buffer, bytes(view[body:]) + b"\0" * (4 - n % 4), dst_offset + body)


class BytesSource:
    """Bytes already in Python memory (tests, small files, fetched data)."""

    def __init__(self, data) -> None:
        self._view = memoryview(data).cast("B")
        self.size = len(self._view)

    def read(self, offset: int, n: int) -> bytes:
        _check_range(self, offset, n)
        return bytes(self._view[offset : offset + n])

    def upload(
        self, device: Any, buffer: Any, src_offset: int, n: int, dst_offset: int = 0, chunk: int = UPLOAD_CHUNK
    ) -> None:
        _check_range(self, src_offset, n)
        _check_upload(device, buffer, n, dst_offset)
        _upload_views(device, buffer, self._view[src_offset : src_offset + n], dst_offset, chunk)


class FileSource:
    """A file on disk (CPython), read with file reads, not memory-mapped: a mapped file truncated
    while it is loaded (re-downloaded, replaced in place) ends the process with SIGBUS when a page
    past its new end is touched, where a read just comes back short (-> ModelFormatError). Uploads
    read UPLOAD_CHUNK at a time, so the extra memory in flight stays at one chunk."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = os.fspath(path)
        try:
            st = os.stat(self.path)
        except OSError as e:
            raise ModelFormatError(f"cannot open model file '{self.path}': {e}") from e
        if stat.S_ISDIR(st.st_mode):  # a checkpoint's config.json or shard that is a folder: no FIFO, socket or device
            raise ModelFormatError(f"'{self.path}' is a folder, not a file: give the path of a model file")
        if not stat.S_ISREG(st.st_mode):  # opening a FIFO would wait for a writer, forever
            raise ModelFormatError(
                f"'{self.path}' is not a regular file (a FIFO, socket or device): give the path of a model file"
            )
        try:
            self._file = open(self.path, "rb", buffering=0)
        except OSError as e:
            raise ModelFormatError(f"cannot open model file '{self.path}': {e}") from e
        self.size = os.fstat(self._file.fileno()).st_size
        if self.size == 0:
            self._file.close()
            raise ModelFormatError(f"model file '{self.path}' is empty")
        self._lock = threading.Lock()  # seek + read as one

    def read(self, offset: int, n: int) -> bytes:
        _check_range(self, offset, n)
        with self._lock:
            self._file.seek(offset)
            data = self._file.read(n)
            while len(data) < n:  # a raw read may return less; only at the end of the file does it return b""
                more = self._file.read(n - len(data))
                if not more:
                    raise ModelFormatError(
                        f"model file '{self.path}' ended at {offset + len(data)} bytes while {offset + n} were "
                        f"read ({self.size} when it was opened): it was truncated or replaced while loading; "
                        "load it again."
                    )
                data += more
        return data

    def upload(
        self, device: Any, buffer: Any, src_offset: int, n: int, dst_offset: int = 0, chunk: int = UPLOAD_CHUNK
    ) -> None:
        _check_range(self, src_offset, n)
        _check_upload(device, buffer, n, dst_offset)
        chunk -= chunk % 4
        for pos in range(0, n, chunk):
            _upload_views(
                device, buffer, memoryview(self.read(src_offset + pos, min(chunk, n - pos))), dst_offset + pos, chunk
            )

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> "FileSource":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class JSBufferSource:
    """A JS Uint8Array in the browser (fetched file, OPFS blob read into memory).

    `upload` passes subarray views to queue.writeBuffer, so tensor bytes never enter Python;
    `read` copies only the small ranges header parsing asks for.
    """

    def __init__(self, u8: Any) -> None:
        self._u8 = u8
        self.size = int(u8.length)

    def read(self, offset: int, n: int) -> bytes:
        _check_range(self, offset, n)
        return self._u8.subarray(offset, offset + n).to_bytes()

    def upload(
        self, device: Any, buffer: Any, src_offset: int, n: int, dst_offset: int = 0, chunk: int = UPLOAD_CHUNK
    ) -> None:
        import js  # type: ignore  # Pyodide only

        _check_range(self, src_offset, n)
        _check_upload(device, buffer, n, dst_offset)
        body = n - n % 4
        pos = 0
        queue = device.raw.queue
        while pos < body:
            m = min(chunk, body - pos)
            off = src_offset + pos
            queue.writeBuffer(buffer.handle, dst_offset + pos, self._u8.subarray(off, off + m))
            pos += m
        if n % 4:
            tail = js.Uint8Array.new(4)
            tail.set(self._u8.subarray(src_offset + body, src_offset + n))
            queue.writeBuffer(buffer.handle, dst_offset + body, tail)


def as_source(obj: Any) -> ByteSource:
    """A ByteSource from a path, bytes-like object or an existing source."""
    if isinstance(obj, (str, os.PathLike)):
        return FileSource(obj)
    if isinstance(obj, (bytes, bytearray, memoryview)):
        return BytesSource(obj)
    if hasattr(obj, "read") and hasattr(obj, "upload") and hasattr(obj, "size"):
        return obj
    if hasattr(obj, "subarray") and hasattr(obj, "length"):  # a JS Uint8Array (Pyodide JsProxy)
        return JSBufferSource(obj)
    raise RequestError(
        f"cannot read model bytes from a {type(obj).__name__}: give a file path, bytes or a Uint8Array "
        "(or a Hugging Face folder / {file name: bytes})"
    )
