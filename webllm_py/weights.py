"""Weights on the GPU: raw (still quantized) tensor bytes streamed from a ByteSource into buffers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .errors import ModelFormatError, ModelTooLargeError
from .formats.quants import GGMLType, TensorInfo, require_supported, type_name


@dataclass(eq=False)
class GPUTensor:
    """A tensor in a GPU buffer in its ggml type. `shape` is outermost first (HF order): a linear
    weight is (rows = out_features, cols = in_features); each row is contiguous."""

    buffer: Any  # gpu.base.Buffer, or a (buffer, offset, size) binding; None when split into `parts`
    ggml_type: GGMLType
    shape: tuple[int, ...]
    name: str = ""
    # a tensor one storage binding cannot hold, as (first row, GPUTensor) blocks of outermost rows
    # in buffers of their own (split_upload); kernels run once per block
    parts: tuple[tuple[int, "GPUTensor"], ...] = ()

    @property
    def rows(self) -> int:
        n = 1
        for d in self.shape[:-1]:
            n *= d
        return n

    @property
    def cols(self) -> int:
        return self.shape[-1]


# Kernels read 4 bytes at any byte offset from two aligned words (dequant.wgsl.j2): keep a spare word.
SPARE_BYTES = 4


def upload_tensor(device: Any, source: Any, info: TensorInfo, name: str | None = None) -> GPUTensor:
    """Copy `info`'s bytes from `source` (None: the source recorded in `info`) into a new GPU buffer."""
    gtype = require_supported(info.ggml_type)
    source = source if source is not None else info.source
    size = info.nbytes + SPARE_BYTES
    limit = device.max_binding_size
    if size > limit:
        raise ModelTooLargeError(
            f"tensor '{info.name}' ({type_name(gtype)}, shape {list(info.hf_shape)}) needs {info.nbytes} bytes, more "
            f"than this GPU's largest storage buffer binding ({limit} bytes). Use a smaller or more quantized model."
        )
    buf = device.create_buffer(size, label=name or info.name)
    source.upload(device, buf, info.offset, info.nbytes, 0)
    return GPUTensor(buf, gtype, tuple(info.hf_shape), name or info.name)


def row_info(info: TensorInfo, r0: int, r1: int, name: str) -> TensorInfo:
    """Outermost rows [r0, r1) of a tensor (rows of a matrix, matrices of a stack) as a tensor of its own."""
    rows = info.hf_shape[0]
    if not 0 <= r0 < r1 <= rows:
        raise ModelFormatError(f"tensor '{info.name}' has {rows} rows; cannot take rows {r0}..{r1}")
    row_bytes = info.nbytes // rows
    shape = (*info.shape[:-1], r1 - r0) if info.ne_first else (r1 - r0, *info.shape[1:])
    return TensorInfo(
        name, shape, info.ggml_type, info.offset + r0 * row_bytes, (r1 - r0) * row_bytes, info.ne_first, info.source
    )


def split_upload(device: Any, info: TensorInfo, align_rows: int = 64) -> GPUTensor:
    """Upload `info` (from its own source) in one buffer where one storage binding holds it, else in
    blocks of outermost rows that each fit (GPUTensor.parts): an LM head of a 150k vocabulary is
    past WebGPU's default 128 MiB binding limit, a stack of 8 experts past it too. Blocks hold a
    multiple of `align_rows` rows, so that an output written per block starts at an aligned binding
    offset (4 bytes * 64 rows = minStorageBufferOffsetAlignment's 256)."""
    require_supported(info.ggml_type)
    limit = device.max_binding_size
    if info.nbytes + SPARE_BYTES <= limit:
        return upload_tensor(device, None, info)
    rows = info.hf_shape[0]
    row_bytes = info.nbytes // rows
    per = (limit - SPARE_BYTES) // row_bytes // align_rows * align_rows
    if per == 0:
        raise ModelTooLargeError(
            f"tensor '{info.name}' ({info.type_name}, shape {list(info.hf_shape)}) cannot be split to fit this GPU: "
            f"a block of {align_rows} row(s) needs {align_rows * row_bytes + SPARE_BYTES} bytes, more than its "
            f"largest storage buffer binding ({limit} bytes)."
        )
    parts = tuple(
        (
            r0,
            upload_tensor(
                device, None, row_info(info, r0, min(r0 + per, rows), f"{info.name}[{r0}:{min(r0 + per, rows)}]")
            ),
        )
        for r0 in range(0, rows, per)
    )
    return GPUTensor(None, require_supported(info.ggml_type), tuple(info.hf_shape), info.name, parts)
