"""GGUF reader in pure Python (runs under Pyodide: no numpy).

Layout (ggml/docs/gguf.md), little-endian:
    magic "GGUF" | version u32 (2 or 3) | n_tensors u64 | n_kv u64
    n_kv x (key: string, value_type u32, value)
    n_tensors x (name: string, n_dims u32, ne[n_dims] u64, ggml_type u32, offset u64)
    padding to `general.alignment` (default 32) | tensor data (offsets relative to its start)
A string is a u64 length followed by UTF-8 bytes; an array is (elem_type u32, count u64, elems).

Only the header is parsed: tensor data stays in the ByteSource. Every count and length is checked
against the bytes that remain before anything is allocated for it, so a corrupt or hostile file
raises ModelFormatError instead of exhausting memory.
"""

from __future__ import annotations

import struct
from typing import Any

from ..errors import ModelFormatError, UnsupportedModelError
from .gguf_keys import General
from .quants import TensorInfo, tensor_nbytes, type_name
from .source import ByteSource, as_source

GGUF_MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32
MAX_DIMS = 4  # GGML_MAX_DIMS
_WINDOW = 1 << 20  # header bytes fetched from the source per read

# GGUF metadata value types -> (struct code, size) for the fixed-size ones.
UINT8, INT8, UINT16, INT16, UINT32, INT32, FLOAT32, BOOL, STRING, ARRAY, UINT64, INT64, FLOAT64 = range(13)
_SCALARS = {
    UINT8: ("B", 1),
    INT8: ("b", 1),
    UINT16: ("H", 2),
    INT16: ("h", 2),
    UINT32: ("I", 4),
    INT32: ("i", 4),
    FLOAT32: ("f", 4),
    BOOL: ("?", 1),
    UINT64: ("Q", 8),
    INT64: ("q", 8),
    FLOAT64: ("d", 8),
}
# The fewest bytes one element of each type can take: the bound for checking array counts.
_MIN_SIZE = {**{t: s for t, (_, s) in _SCALARS.items()}, STRING: 8, ARRAY: 12}


class _Cursor:
    """Sequential little-endian reads over a ByteSource through a window of cached bytes."""

    def __init__(self, source: ByteSource, pos: int = 0) -> None:
        self.src = source
        self.pos = pos
        self._buf = b""
        self._buf_start = 0

    @property
    def remaining(self) -> int:
        return self.src.size - self.pos

    def take(self, n: int, what: str) -> tuple[bytes, int]:
        """(buffer, index) such that buffer[index:index+n] are the next n bytes."""
        if n < 0 or n > self.remaining:
            raise ModelFormatError(
                f"GGUF: {what} needs {n} bytes at offset {self.pos} but only {max(self.remaining, 0)} remain: "
                "the file is truncated or corrupt."
            )
        i = self.pos - self._buf_start
        if i < 0 or i + n > len(self._buf):
            self._buf_start = self.pos
            self._buf = self.src.read(self.pos, min(max(n, _WINDOW), self.remaining))
            i = 0
        self.pos += n
        return self._buf, i

    def unpack(self, code: str, size: int, what: str):
        buf, i = self.take(size, what)
        return struct.unpack_from("<" + code, buf, i)[0]

    def u32(self, what: str) -> int:
        return self.unpack("I", 4, what)

    def u64(self, what: str) -> int:
        return self.unpack("Q", 8, what)

    def string(self, what: str) -> str:
        n = self.u64(f"length of {what}")
        if n > self.remaining:
            raise ModelFormatError(f"GGUF: {what} claims {n} bytes but only {self.remaining} remain in the file.")
        buf, i = self.take(n, what)
        return _text(bytes(buf[i : i + n]))

    def strings(self, count: int, what: str) -> list[str]:
        """`count` strings: those wholly inside the read window without a call per field (a vocabulary
        is ~50-250k of them: half of a model's open time in Pyodide), the others through string()."""
        out, unpack = [], struct.unpack_from
        for _ in range(count):
            buf, i = self._buf, self.pos - self._buf_start
            if 0 <= i and i + 8 <= len(buf):
                n = unpack("<Q", buf, i)[0]
                if i + 8 + n <= len(buf):
                    self.pos += 8 + n
                    out.append(_text(bytes(buf[i + 8 : i + 8 + n])))
                    continue
            out.append(self.string(what))
        return out


def _text(b: bytes) -> str:
    try:
        return b.decode("utf-8")
    except UnicodeDecodeError:
        # Token pieces of some vocabularies are not valid UTF-8 on their own; keep them lossless.
        return b.decode("utf-8", errors="surrogateescape")


def _read_value(cur: _Cursor, vtype: int, what: str, depth: int = 0) -> Any:
    if vtype in _SCALARS:
        code, size = _SCALARS[vtype]
        return cur.unpack(code, size, what)
    if vtype == STRING:
        return cur.string(what)
    if vtype == ARRAY:
        if depth > 8:
            raise ModelFormatError(f"GGUF: {what} nests arrays more than 8 deep.")
        etype = cur.u32(f"element type of {what}")
        count = cur.u64(f"length of {what}")
        if etype not in _MIN_SIZE:
            raise ModelFormatError(f"GGUF: {what} has unknown element type {etype}.")
        if count * _MIN_SIZE[etype] > cur.remaining:
            raise ModelFormatError(
                f"GGUF: {what} claims {count} elements, more than the {cur.remaining} "
                "remaining bytes can hold: the file is corrupt."
            )
        if etype in _SCALARS:  # one struct call for the whole array
            code, size = _SCALARS[etype]
            buf, i = cur.take(count * size, what)
            return list(struct.unpack_from(f"<{count}{code}", buf, i))
        if etype == STRING:
            return cur.strings(count, what)
        return [_read_value(cur, etype, what, depth + 1) for _ in range(count)]
    raise ModelFormatError(f"GGUF: {what} has unknown value type {vtype}.")


class GGUFFile:
    """The parsed header of a GGUF file: `.metadata`, `.tensors` (name -> TensorInfo), `.data_offset`."""

    def __init__(self, source: Any) -> None:
        self.source = as_source(source)
        cur = _Cursor(self.source)
        magic, i = cur.take(4, "magic")
        if bytes(magic[i : i + 4]) != GGUF_MAGIC:
            raise ModelFormatError(f"not a GGUF file (magic {bytes(magic[i : i + 4])!r}, expected b'GGUF').")
        self.version = cur.u32("version")
        if self.version not in (2, 3):
            if self.version in (1,):
                raise UnsupportedModelError(
                    "GGUF version 1 is obsolete; convert the model again with a recent llama.cpp."
                )
            raise ModelFormatError(
                f"GGUF version {self.version} is not supported (expected 2 or 3); a big-endian "
                "file or a corrupt header reads this way."
            )
        n_tensors = cur.u64("tensor count")
        n_kv = cur.u64("metadata count")
        if n_kv * 13 > cur.remaining:  # key len 8 + at least 1 char... + type 4 -> >= 12 bytes + value
            raise ModelFormatError(f"GGUF: header claims {n_kv} metadata entries, more than the file can hold.")
        self.metadata: dict[str, Any] = {}
        self.value_types: dict[str, int] = {}
        for _ in range(n_kv):
            key = cur.string("metadata key")
            vtype = cur.u32(f"type of '{key}'")
            if key in self.metadata:
                raise ModelFormatError(f"GGUF: metadata key '{key}' appears twice.")
            self.metadata[key] = _read_value(cur, vtype, f"metadata '{key}'")
            self.value_types[key] = vtype

        align = self.metadata.get(General.ALIGNMENT, DEFAULT_ALIGNMENT)
        if not isinstance(align, int) or isinstance(align, bool) or align <= 0 or align & (align - 1):
            raise ModelFormatError(f"GGUF: general.alignment must be a power of two, got {align!r}.")
        self.alignment = align

        if n_tensors * 24 > cur.remaining:  # name len 8 + n_dims 4 + type 4 + offset 8
            raise ModelFormatError(f"GGUF: header claims {n_tensors} tensors, more than the file can hold.")
        raw = []
        for _ in range(n_tensors):
            name = cur.string("tensor name")
            n_dims = cur.u32(f"n_dims of '{name}'")
            if n_dims > MAX_DIMS:
                raise ModelFormatError(f"GGUF: tensor '{name}' has {n_dims} dimensions (at most {MAX_DIMS}).")
            shape = tuple(cur.u64(f"shape of '{name}'") for _ in range(n_dims))
            gtype = cur.u32(f"type of '{name}'")
            offset = cur.u64(f"offset of '{name}'")
            raw.append((name, shape, gtype, offset))

        self.data_offset = (cur.pos + align - 1) // align * align
        data_size = self.source.size - self.data_offset
        self.tensors: dict[str, TensorInfo] = {}
        for name, shape, gtype, offset in raw:
            if name in self.tensors:
                raise ModelFormatError(f"GGUF: tensor '{name}' appears twice.")
            if offset % align:
                raise ModelFormatError(f"GGUF: tensor '{name}' offset {offset} is not aligned to {align}.")
            try:
                nbytes = tensor_nbytes(gtype, shape)
            except UnsupportedModelError:
                nbytes = -1  # a type we cannot size: listed, but upload_tensor will refuse it
            if nbytes >= 0 and offset + nbytes > data_size:
                raise ModelFormatError(
                    f"GGUF: tensor '{name}' ({type_name(gtype)}, shape {list(shape)}, {nbytes} bytes at data offset "
                    f"{offset}) runs past the end of the file ({data_size} data bytes): the file is truncated."
                )
            self.tensors[name] = TensorInfo(
                name, shape, gtype, self.data_offset + offset, nbytes, ne_first=True, source=self.source
            )

    def __repr__(self) -> str:
        return f"GGUFFile(v{self.version}, {len(self.metadata)} metadata keys, {len(self.tensors)} tensors)"


def read_metadata(path_or_source: Any) -> dict[str, Any]:
    """The metadata dict of a GGUF file (tensor data is not read)."""
    return GGUFFile(path_or_source).metadata


# llama-gguf-split (and gguf-py's writer with split_max_*) writes a model as N files, each a complete
# GGUF: the first has all the model's metadata, every one has split.no (u16, from 0), split.count (u16)
# and split.tensors.count (i32, the tensors of the whole set), and its own share of the tensors.
SPLIT_NO, SPLIT_COUNT, SPLIT_TENSORS = "split.no", "split.count", "split.tensors.count"


def merge_split(files: list[GGUFFile]) -> tuple[dict[str, Any], dict[str, TensorInfo]]:
    """The metadata (the first shard's) and the tensors of all shards of a split GGUF, in order, checked
    to be one whole set. One file that is not a shard passes through unchanged."""
    n = len(files)
    first = files[0].metadata
    count = first.get(SPLIT_COUNT, 1)
    if count != n:
        raise ModelFormatError(
            f"GGUF: this model is split into {count} files but {n} {'was' if n == 1 else 'were'} given: "
            "load it by the name of its first shard (…-00001-of-0000N.gguf) so every shard is read."
        )
    tensors: dict[str, TensorInfo] = {}
    for i, g in enumerate(files):
        if n > 1 and g.metadata.get(SPLIT_NO) != i:
            raise ModelFormatError(
                f"GGUF: shard {i + 1} of {n} says it is shard {g.metadata.get(SPLIT_NO)!r} "
                "(split.no counts from 0): the files are out of order or from different models."
            )
        if n > 1 and g.metadata.get(SPLIT_COUNT) != n:
            raise ModelFormatError(
                f"GGUF: shard {i + 1} says the model has {g.metadata.get(SPLIT_COUNT)!r} shards, "
                f"not {n}: the files are from different splits."
            )
        for name, info in g.tensors.items():
            if name in tensors:
                raise ModelFormatError(f"GGUF: tensor '{name}' is in more than one shard.")
            tensors[name] = info
    if n > 1 and first.get(SPLIT_TENSORS) != len(tensors):
        raise ModelFormatError(
            f"GGUF: the shards hold {len(tensors)} tensors but split.tensors.count says "
            f"{first.get(SPLIT_TENSORS)!r}: a shard is missing or truncated."
        )
    return first, tensors
