"""ggml tensor types and their block layouts, declared once as data.

A quantized ggml tensor is a sequence of blocks along each row (ne0, the fastest dimension):
`block_size` elements packed into `type_size` bytes. Values are those of ggml's `enum ggml_type`
(ggml.h); the byte layouts follow ggml-common.h and are what the WGSL kernels decode.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

from ..errors import ModelFormatError, UnsupportedModelError


class GGMLType(IntEnum):
    F32 = 0
    F16 = 1
    Q4_0 = 2
    Q4_1 = 3
    Q5_0 = 6
    Q5_1 = 7
    Q8_0 = 8
    Q8_1 = 9
    Q2_K = 10
    Q3_K = 11
    Q4_K = 12
    Q5_K = 13
    Q6_K = 14
    Q8_K = 15
    IQ2_XXS = 16
    IQ2_XS = 17
    IQ3_XXS = 18
    IQ1_S = 19
    IQ4_NL = 20
    IQ3_S = 21
    IQ2_S = 22
    IQ4_XS = 23
    I8 = 24
    I16 = 25
    I32 = 26
    I64 = 27
    F64 = 28
    IQ1_M = 29
    BF16 = 30
    TQ1_0 = 34
    TQ2_0 = 35
    MXFP4 = 39


@dataclass(frozen=True)
class BlockLayout:
    block_size: int  # elements per block
    type_size: int  # bytes per block
    supported: bool  # decoded by our kernels


QK_K = 256  # super-block size of the k-quants

# (block_size, type_size) from ggml-common.h; `supported` marks what the WGSL kernels decode.
LAYOUTS: dict[GGMLType, BlockLayout] = {
    GGMLType.F32: BlockLayout(1, 4, True),
    GGMLType.F16: BlockLayout(1, 2, True),
    GGMLType.BF16: BlockLayout(1, 2, True),
    GGMLType.Q4_0: BlockLayout(32, 2 + 16, True),  # d:f16, qs[16] (low nibbles = first 16 elements)
    GGMLType.Q4_1: BlockLayout(32, 4 + 16, True),  # d:f16, m:f16, qs[16]
    GGMLType.Q5_0: BlockLayout(32, 2 + 4 + 16, True),  # d:f16, qh:u32 (5th bits), qs[16]
    GGMLType.Q5_1: BlockLayout(32, 4 + 4 + 16, True),  # d, m:f16, qh:u32, qs[16]
    GGMLType.Q8_0: BlockLayout(32, 2 + 32, True),  # d:f16, qs[32] int8
    GGMLType.Q8_1: BlockLayout(32, 4 + 32, False),
    GGMLType.Q2_K: BlockLayout(QK_K, QK_K // 16 + QK_K // 4 + 4, True),  # scales[16], qs[64], d, dmin:f16
    GGMLType.Q3_K: BlockLayout(QK_K, QK_K // 8 + QK_K // 4 + 12 + 2, True),  # hmask[32] qs[64] scales[12] d
    GGMLType.Q4_K: BlockLayout(QK_K, 4 + 12 + QK_K // 2, True),  # d,dmin:f16, scales[12] (6-bit), qs[128]
    GGMLType.Q5_K: BlockLayout(QK_K, 4 + 12 + QK_K // 8 + QK_K // 2, True),  # Q4_K's fields, qh[32] before qs[128]
    GGMLType.Q6_K: BlockLayout(QK_K, QK_K // 2 + QK_K // 4 + QK_K // 16 + 2, True),  # ql[128] qh[64] scales[16] d
    GGMLType.Q8_K: BlockLayout(QK_K, 4 + QK_K + QK_K // 8, False),
    GGMLType.IQ4_NL: BlockLayout(32, 2 + 16, True),  # d:f16, qs[16] as Q4_0, nibbles index IQ4_NL_VALUES
    GGMLType.IQ4_XS: BlockLayout(QK_K, 2 + 2 + QK_K // 64 + QK_K // 2, True),  # d, scales_h:u16, scales_l[4], qs[128]
    GGMLType.I8: BlockLayout(1, 1, False),
    GGMLType.I16: BlockLayout(1, 2, False),
    GGMLType.I32: BlockLayout(1, 4, False),
    GGMLType.I64: BlockLayout(1, 8, False),
    GGMLType.F64: BlockLayout(1, 8, False),
}

# The 16 levels IQ4_NL / IQ4_XS nibbles index (kvalues_iq4nl in ggml-common.h), times the block scale.
IQ4_NL_VALUES = (-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113)

SUPPORTED = frozenset(t for t, lay in LAYOUTS.items() if lay.supported)


def type_name(t: Any) -> str:
    try:
        return GGMLType(int(t)).name
    except ValueError:
        return f"unknown ggml type {int(t)}"


def layout_of(t: Any) -> BlockLayout:
    """The block layout of ggml type `t`; UnsupportedModelError for types we cannot size."""
    try:
        return LAYOUTS[GGMLType(int(t))]
    except (ValueError, KeyError):
        raise UnsupportedModelError(
            f"tensor type {type_name(t)} is not supported by webllm_py; use a model quantized as one of "
            f"{', '.join(sorted(x.name for x in SUPPORTED))}."
        ) from None


def require_supported(t: Any) -> GGMLType:
    """`t` as a GGMLType if our kernels decode it, else UnsupportedModelError naming it."""
    lay = layout_of(t)
    if not lay.supported:
        raise UnsupportedModelError(
            f"tensor type {type_name(t)} is not supported by webllm_py's kernels; use a model quantized as one of "
            f"{', '.join(sorted(x.name for x in SUPPORTED))}."
        )
    return GGMLType(int(t))


def row_nbytes(t: Any, n_cols: int) -> int:
    lay = layout_of(t)
    if n_cols % lay.block_size:
        raise ModelFormatError(
            f"a row of {n_cols} elements is not a whole number of {type_name(t)} blocks "
            f"({lay.block_size} elements each)"
        )
    return n_cols // lay.block_size * lay.type_size


def tensor_nbytes(t: Any, shape_ne: tuple[int, ...]) -> int:
    """Bytes of a tensor of type `t` whose dimensions are given ne0 (the row length) first."""
    if not shape_ne:
        shape_ne = (1,)
    n_rows = 1
    for d in shape_ne[1:]:
        n_rows *= d
    return row_nbytes(t, shape_ne[0]) * n_rows


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor's bytes are and how to read them.

    `shape` is in the file format's own order: GGUF stores ne0 (the contiguous row length) first,
    safetensors the outermost dimension first. `hf_shape` is always outermost first, so a linear
    weight is (out_features, in_features) = (rows, cols) from either format.
    `offset` is absolute within `source`.
    """

    name: str
    shape: tuple[int, ...]
    ggml_type: int
    offset: int
    nbytes: int
    ne_first: bool = True
    source: Any = field(default=None, compare=False, repr=False)

    @property
    def hf_shape(self) -> tuple[int, ...]:
        return tuple(reversed(self.shape)) if self.ne_first else tuple(self.shape)

    @property
    def n_elements(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def type_name(self) -> str:
        return type_name(self.ggml_type)
