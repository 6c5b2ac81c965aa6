"""Hugging Face safetensors reader (single files and sharded directories), pure Python.

Layout: header_len u64 LE | header_len bytes of JSON | data. The JSON maps each tensor name to
{"dtype", "shape" (outermost first), "data_offsets": [begin, end]} relative to the data start,
plus an optional "__metadata__" of string pairs. Sharded checkpoints add
`model.safetensors.index.json` with {"weight_map": {tensor name: shard file name}}.

Tensors are described by the same TensorInfo as GGUF (ne_first=False) and read through a
ByteSource, so data is never loaded to parse. Malformed input raises ModelFormatError.
"""

from __future__ import annotations

import json
import os
import struct
from typing import Any, Mapping

from ..errors import ModelFormatError
from .quants import GGMLType, TensorInfo
from .source import as_source

MAX_HEADER = 100 << 20  # the reference implementation's limit as well

# dtype -> (bytes per element, ggml type or None where no kernel reads it)
DTYPES: dict[str, tuple[int, int]] = {
    "F32": (4, GGMLType.F32),
    "F16": (2, GGMLType.F16),
    "BF16": (2, GGMLType.BF16),
    "F64": (8, GGMLType.F64),
    "I64": (8, GGMLType.I64),
    "I32": (4, GGMLType.I32),
    "I16": (2, GGMLType.I16),
    "I8": (1, GGMLType.I8),
    "U8": (1, -1),
    "U16": (2, -1),
    "U32": (4, -1),
    "U64": (8, -1),
    "BOOL": (1, -1),
    "F8_E4M3": (1, -1),
    "F8_E5M2": (1, -1),
}


def _no_duplicates(pairs):
    d = {}
    for k, v in pairs:
        if k in d:
            raise ModelFormatError(f"safetensors: header names '{k}' twice.")
        d[k] = v
    return d


class SafetensorsFile:
    """One .safetensors file: `.metadata` (str -> str), `.tensors` (name -> TensorInfo), `.data_offset`."""

    def __init__(self, source: Any, name: str = "") -> None:
        self.source = as_source(source)
        self.name = name or getattr(self.source, "path", "safetensors data")
        size = self.source.size
        if size < 8:
            raise ModelFormatError(f"{self.name}: {size} bytes is too short for a safetensors file (truncated?).")
        (hlen,) = struct.unpack("<Q", self.source.read(0, 8))
        if hlen > min(MAX_HEADER, size - 8):
            raise ModelFormatError(
                f"{self.name}: header length {hlen} exceeds the file ({size} bytes) or the "
                f"{MAX_HEADER}-byte limit: not a safetensors file, or truncated."
            )
        try:
            header = json.loads(self.source.read(8, hlen).decode("utf-8"), object_pairs_hook=_no_duplicates)
        except (UnicodeDecodeError, ValueError, RecursionError) as e:
            raise ModelFormatError(f"{self.name}: header is not valid JSON ({e}).") from None
        if not isinstance(header, dict):
            raise ModelFormatError(f"{self.name}: header must be a JSON object.")
        self.data_offset = 8 + hlen
        data_size = size - self.data_offset
        meta = header.pop("__metadata__", {}) or {}
        if not isinstance(meta, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
            raise ModelFormatError(f"{self.name}: __metadata__ must map strings to strings.")
        self.metadata: dict[str, str] = meta
        self.tensors: dict[str, TensorInfo] = {}
        self.dtypes: dict[str, str] = {}  # the file's own dtype names
        spans = []
        for tname, entry in header.items():
            spans.append(self._tensor(tname, entry, data_size))
        spans.sort()
        for (b0, e0, n0), (b1, e1, n1) in zip(spans, spans[1:]):
            if b1 < e0:
                raise ModelFormatError(f"{self.name}: tensors '{n0}' and '{n1}' overlap.")

    def _tensor(self, tname: str, entry: Any, data_size: int) -> tuple[int, int, str]:
        where = f"{self.name}: tensor '{tname}'"
        if not isinstance(entry, dict):
            raise ModelFormatError(f"{where} must be described by a JSON object.")
        dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
        if dtype not in DTYPES:
            raise ModelFormatError(f"{where} has unknown dtype {dtype!r}.")
        if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape) or len(shape) > 8:
            raise ModelFormatError(f"{where} has an invalid shape {shape!r}.")
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(type(o) is int for o in offsets)
            or not 0 <= offsets[0] <= offsets[1] <= data_size
        ):
            raise ModelFormatError(
                f"{where} has data_offsets {offsets!r} outside the {data_size} data bytes (truncated file?)."
            )
        n = 1
        for d in shape:
            n *= d
        esize, gtype = DTYPES[dtype]
        begin, end = offsets
        if end - begin != n * esize:
            raise ModelFormatError(
                f"{where}: {dtype} {shape} needs {n * esize} bytes but data_offsets span {end - begin}."
            )
        self.tensors[tname] = TensorInfo(
            tname, tuple(shape), int(gtype), self.data_offset + begin, end - begin, ne_first=False, source=self.source
        )
        self.dtypes[tname] = dtype
        return begin, end, tname


class SafetensorsModel:
    """All tensors of a checkpoint: one file, or shards listed by model.safetensors.index.json."""

    def __init__(self, files: Mapping[str, SafetensorsFile], weight_map: Mapping[str, str] | None = None) -> None:
        self.files = dict(files)
        self.tensors: dict[str, TensorInfo] = {}
        self.metadata: dict[str, str] = {}
        for fname, f in self.files.items():
            self.metadata.update(f.metadata)
            for tname, info in f.tensors.items():
                if weight_map is not None and weight_map.get(tname) != fname:
                    raise ModelFormatError(
                        f"tensor '{tname}' is in shard '{fname}' but the index puts it in '{weight_map.get(tname)}'."
                    )
                if tname in self.tensors:
                    raise ModelFormatError(f"tensor '{tname}' appears in more than one shard.")
                self.tensors[tname] = info
        if weight_map is not None:
            missing = sorted(set(weight_map) - set(self.tensors))
            if missing:
                raise ModelFormatError(f"the index lists {len(missing)} tensors no shard holds, e.g. '{missing[0]}'.")

    @classmethod
    def from_index(cls, index: bytes | str | dict, sources: Mapping[str, Any]) -> "SafetensorsModel":
        """`index`: the index JSON; `sources`: shard file name -> ByteSource/path/bytes."""
        if not isinstance(index, dict):
            try:
                index = json.loads(index)
            except ValueError as e:
                raise ModelFormatError(f"model.safetensors.index.json is not valid JSON ({e}).") from None
        wm = index.get("weight_map") if isinstance(index, dict) else None
        if not isinstance(wm, dict) or not all(isinstance(v, str) for v in wm.values()):
            raise ModelFormatError("model.safetensors.index.json has no valid 'weight_map'.")
        needed = sorted(set(wm.values()))
        absent = [n for n in needed if n not in sources]
        if absent:
            raise ModelFormatError(f"the safetensors index needs shard '{absent[0]}', which was not provided.")
        return cls({n: SafetensorsFile(sources[n], n) for n in needed}, wm)


def open_safetensors(path: str | os.PathLike) -> SafetensorsModel:
    """A .safetensors file, or a directory holding model.safetensors or a sharded index."""
    path = os.fspath(path)
    if os.path.isdir(path):
        index = os.path.join(path, "model.safetensors.index.json")
        if os.path.exists(index):
            with open(index, "rb") as f:
                data = f.read()
            try:
                wm = json.loads(data).get("weight_map", {})
                names = set(wm.values()) if isinstance(wm, dict) else set()
            except (ValueError, AttributeError):
                names = set()
            if any(os.sep in str(n) or n in ("", "..") for n in names):
                raise ModelFormatError("model.safetensors.index.json names shards outside its directory.")
            return SafetensorsModel.from_index(
                data, {n: os.path.join(path, n) for n in names if os.path.exists(os.path.join(path, n))}
            )
        path = os.path.join(path, "model.safetensors")
    name = os.path.basename(path)
    return SafetensorsModel({name: SafetensorsFile(as_source(path), name)})
