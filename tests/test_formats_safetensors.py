"""safetensors reader vs the `safetensors` package (independent reference) on files written by
hand from the format spec; sharded directories; hypothesis fuzz: only ModelFormatError."""

import json
import struct
import tracemalloc

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from webllm_py.errors import ModelFormatError
from webllm_py.formats.quants import GGMLType
from webllm_py.formats.safetensors import SafetensorsFile, open_safetensors
from webllm_py.formats.source import BytesSource


def write_safetensors(tensors: dict[str, tuple[str, np.ndarray]], metadata=None) -> bytes:
    """The format by hand: u64 header length, JSON header, tensor bytes back to back."""
    header, chunks, pos = {}, [], 0
    for name, (dtype, arr) in tensors.items():
        raw = np.ascontiguousarray(arr).tobytes()
        header[name] = {"dtype": dtype, "shape": list(arr.shape), "data_offsets": [pos, pos + len(raw)]}
        chunks.append(raw)
        pos += len(raw)
    if metadata is not None:
        header["__metadata__"] = metadata
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + b"".join(chunks)


def bf16_bits(a: np.ndarray) -> np.ndarray:
    return (a.astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)


def sample_tensors(rng):
    return {
        "model.layers.0.mlp.up_proj.weight": ("F16", rng.standard_normal((6, 8)).astype(np.float16)),
        "model.norm.weight": ("F32", rng.standard_normal(8).astype(np.float32)),
        "lm_head.weight": ("BF16", bf16_bits(rng.standard_normal((3, 4)))),
        "scalar": ("F32", np.array(1.5, np.float32)),
    }


def test_matches_safetensors_package(tmp_path):
    from safetensors import safe_open

    blob = write_safetensors(sample_tensors(np.random.default_rng(0)), {"format": "pt"})
    p = tmp_path / "model.safetensors"
    p.write_bytes(blob)
    ours = SafetensorsFile(BytesSource(blob))
    assert ours.metadata == {"format": "pt"}
    with safe_open(str(p), "pt") as ref:
        assert set(ref.keys()) == set(ours.tensors)
        for name in ref.keys():
            t = ref.get_tensor(name)
            info = ours.tensors[name]
            assert info.hf_shape == tuple(t.shape) and info.nbytes == t.numel() * t.element_size()
            got = info.source.read(info.offset, info.nbytes)
            assert got == t.contiguous().view(-1).view(__import__("torch").uint8).numpy().tobytes()
    assert ours.tensors["lm_head.weight"].ggml_type == GGMLType.BF16
    assert ours.tensors["model.layers.0.mlp.up_proj.weight"].ggml_type == GGMLType.F16
    assert set(open_safetensors(tmp_path).tensors) == set(ours.tensors)


def test_sharded_directory(tmp_path):
    rng = np.random.default_rng(1)
    a = {"x.weight": ("F32", rng.standard_normal((2, 4)).astype(np.float32))}
    b = {"y.weight": ("F16", rng.standard_normal((4,)).astype(np.float16))}
    (tmp_path / "model-00001-of-00002.safetensors").write_bytes(write_safetensors(a))
    (tmp_path / "model-00002-of-00002.safetensors").write_bytes(write_safetensors(b))
    index = {
        "metadata": {},
        "weight_map": {"x.weight": "model-00001-of-00002.safetensors", "y.weight": "model-00002-of-00002.safetensors"},
    }
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    m = open_safetensors(tmp_path)
    x = m.tensors["x.weight"]
    assert np.array_equal(np.frombuffer(x.source.read(x.offset, x.nbytes), np.float32).reshape(2, 4), a["x.weight"][1])
    y = m.tensors["y.weight"]
    assert np.array_equal(np.frombuffer(y.source.read(y.offset, y.nbytes), np.float16), b["y.weight"][1])
    index["weight_map"]["z.weight"] = "model-00003-of-00002.safetensors"
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(ModelFormatError, match="shard"):
        open_safetensors(tmp_path)


def test_clear_errors():
    with pytest.raises(ModelFormatError, match="too short"):
        SafetensorsFile(BytesSource(b"\1\0"))
    with pytest.raises(ModelFormatError, match="header length"):
        SafetensorsFile(BytesSource(struct.pack("<Q", 1 << 40) + b"{}"))
    good = write_safetensors({"a": ("F32", np.zeros(4, np.float32))})
    with pytest.raises(ModelFormatError, match="outside"):
        SafetensorsFile(BytesSource(good[:-1]))
    bad = json.dumps({"a": {"dtype": "F32", "shape": [5], "data_offsets": [0, 16]}}).encode()
    with pytest.raises(ModelFormatError, match="needs 20 bytes"):
        SafetensorsFile(BytesSource(struct.pack("<Q", len(bad)) + bad + b"\0" * 16))
    dup = b'{"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, "a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}'
    with pytest.raises(ModelFormatError, match="twice"):
        SafetensorsFile(BytesSource(struct.pack("<Q", len(dup)) + dup + b"\0" * 4))


def _parse_or_format_error(data: bytes) -> None:
    # Counts and lengths are checked before allocating: parsing a small file never takes much memory.
    tracemalloc.start()
    try:
        SafetensorsFile(BytesSource(data))
    except ModelFormatError:
        pass
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert peak < 16 * len(data) + (4 << 20), f"parsing {len(data)} bytes peaked at {peak} bytes"


FUZZ = settings(max_examples=300, deadline=2000, suppress_health_check=[HealthCheck.function_scoped_fixture])
VALID = write_safetensors(sample_tensors(np.random.default_rng(2)), {"k": "v"})


@FUZZ
@given(st.binary(max_size=300))
def test_fuzz_random_bytes(data):
    _parse_or_format_error(data)
    _parse_or_format_error(VALID[:8] + data)


@FUZZ
@given(data=st.data())
def test_fuzz_truncations_and_mutations(data):
    blob = bytearray(VALID)
    _parse_or_format_error(bytes(blob[: data.draw(st.integers(0, len(blob)))]))
    (hlen,) = struct.unpack("<Q", VALID[:8])
    for _ in range(data.draw(st.integers(1, 6))):
        blob[data.draw(st.integers(0, 8 + hlen - 1))] = data.draw(st.integers(0, 255))
    _parse_or_format_error(bytes(blob))
