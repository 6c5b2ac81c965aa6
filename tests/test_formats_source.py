"""ByteSource uploads: chunking, 4-byte tail padding, bounds; upload_tensor's size check; the
browser source's logic against a stand-in for Pyodide's JS objects."""

import asyncio
import sys
import types

import numpy as np
import pytest

from webllm_py.errors import ModelFormatError, ModelTooLargeError, UnsupportedModelError
from webllm_py.formats.quants import GGMLType, TensorInfo
from webllm_py.formats.source import BytesSource, FileSource, JSBufferSource
from webllm_py.weights import upload_tensor


def test_chunked_upload_with_padded_tail(device, tmp_path):
    data = bytes(np.random.default_rng(0).integers(0, 256, 1001, dtype=np.uint8))
    p = tmp_path / "blob"
    p.write_bytes(data)
    for src in (BytesSource(data), FileSource(p)):
        buf = device.create_buffer(1024)
        device.write_buffer(buf, b"\xff" * 1024)
        src.upload(device, buf, 3, 998, dst_offset=8, chunk=64)
        got = asyncio.run(device.read_buffer(buf))
        assert got[8 : 8 + 998] == data[3:1001]
        assert got[8 + 998 : 8 + 1000] == b"\0\0"  # padded tail
        assert got[:8] == b"\xff" * 8
    with pytest.raises(ModelFormatError, match="past the end"):
        BytesSource(data).read(1000, 2)


def test_upload_tensor_checks_binding_size(device):
    class Small:
        max_binding_size = 64

        def __getattr__(self, name):
            return getattr(device, name)

    info = TensorInfo("big", (32, 4), int(GGMLType.Q8_0), 0, 4 * 34)
    with pytest.raises(ModelTooLargeError, match="136 bytes"):
        upload_tensor(Small(), BytesSource(b"\0" * 136), info)
    with pytest.raises(UnsupportedModelError, match="Q8_1"):
        upload_tensor(device, BytesSource(b"\0" * 144), TensorInfo("q", (32, 4), int(GGMLType.Q8_1), 0, 144))


class FakeU8:
    """Stand-in for a Pyodide JsProxy of a Uint8Array (length, subarray, set, to_bytes)."""

    def __init__(self, data):
        self.data = bytearray(data)

    @property
    def length(self):
        return len(self.data)

    def subarray(self, a, b):
        return FakeU8(self.data[a:b])

    def set(self, other, offset=0):
        self.data[offset : offset + len(other.data)] = other.data

    def to_bytes(self):
        return bytes(self.data)


def test_js_source_chunks_and_pads(monkeypatch):
    fake_js = types.SimpleNamespace(Uint8Array=types.SimpleNamespace(new=lambda n: FakeU8(b"\0" * n)))
    monkeypatch.setitem(sys.modules, "js", fake_js)
    writes = []
    queue = types.SimpleNamespace(writeBuffer=lambda h, off, view: writes.append((off, view.to_bytes())))
    dev = types.SimpleNamespace(raw=types.SimpleNamespace(queue=queue))
    buf = types.SimpleNamespace(handle="h", size=112, label="b")
    data = bytes(range(200))
    src = JSBufferSource(FakeU8(data))
    assert src.size == 200 and src.read(5, 3) == data[5:8]
    src.upload(dev, buf, 10, 103, dst_offset=4, chunk=40)
    assert [(o, len(b)) for o, b in writes] == [(4, 40), (44, 40), (84, 20), (104, 4)]
    assert b"".join(b for _, b in writes) == data[10:113] + b"\0"
