"""Weights on the GPU: raw (still quantized) tensor bytes streamed from a ByteSource into buffers."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .errors import ModelTooLargeError
from .formats.quants import GGMLType, TensorInfo, require_supported, type_name


@dataclass(eq=False)
class GPUTensor:
    """A tensor in a GPU buffer in its ggml type. `shape` is outermost first (HF order): a linear
    weight is (rows = out_features, cols = in_features); each row is contiguous."""
    buffer: Any  # gpu.base.Buffer
    ggml_type: GGMLType
    shape: tuple[int, ...]
    name: str = ""

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
            f"than this GPU's largest storage buffer binding ({limit} bytes). Use a smaller or more quantized model.")
    buf = device.create_buffer(size, label=name or info.name)
    source.upload(device, buf, info.offset, info.nbytes, 0)
    return GPUTensor(buf, gtype, tuple(info.hf_shape), name or info.name)
