"""Kernel choice: which template and tiling runs an op, as pure functions of data.

    plan_matvec(adapter, qtype, N, K, bias, policy, request)  -> MatvecPlan(template, tiling, ...)
    plan_matmul(adapter, qtype, N, K, policy, request)         -> MatmulPlan(template, tiling)
    plan_attention(adapter, n_heads, n_kv_heads, head_dim, policy, ...) -> AttentionPlan

`Adapter` is what the choice needs to know of a device (Adapter.of(device)); `KernelPolicy` holds the
choices a caller may override (Engine.load(policy=...): bench A/B runs, tests); nothing here reads the
environment or is patched. Each op's choice is a table read top to bottom, the first row that applies
wins and the last always applies (llama.cpp's Vulkan backend picks its pipelines the same way). The
measurements behind the rows are in docs/benchmarks.md ("Kernel choice").
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Callable

from .errors import KernelPolicyError
from .formats.quants import GGMLType
from .gpu.base import SGMAT_FEATURE

DEFAULT_WORKGROUP_STORAGE = 16384  # WebGPU's default maxComputeWorkgroupStorageSize
MAX_UNIFORM_BINDING = 65536  # WebGPU's default maxUniformBufferBindingSize


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


# -- tilings ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MatvecTiling:
    """matvec.wgsl.j2 (split_k: a workgroup's threads split K and reduce) or matvec_rows.wgsl.j2
    (not split_k: whole rows per thread, no barriers; CPU adapters)."""

    wg: int = 64  # threads per workgroup
    rows: int = 2  # rows per workgroup (split_k) or per thread
    split_k: bool = True
    shape_at_run_time: bool = False  # matvec_rows: K, row bytes and accumulate at run time (MatmulRowsTiling's)

    def groups(self, n: int, K: int = 0) -> int:
        return _ceil_div(n, self.rows if self.split_k else self.rows * self.wg)


@dataclass(frozen=True)
class StagedTiling:
    """matvec_q4s.wgsl.j2: x staged as int8 in workgroup memory; teams of `lanes` threads own
    `rows` rows each and split K into 256-weight units."""

    wg: int = 256  # threads per workgroup
    lanes: int = 8  # threads per row (at most K / 256)
    rows: int = 1  # rows per team
    prefetch: bool = False  # load a lane's next unit while the current one's math runs
    # int8 planes of x: 2 adds the rounding residual at a step of dx / 254 (as MatmulI8Tiling.planes):
    # real decode logits 40x closer to f32 x (docs/benchmarks.md, "Real models through the GPU paths on
    # lavapipe"); 1 by default: on the H200 2 planes cost 17-19% of decode (1B and 8B, Dawn and native),
    # twice the x staged per workgroup (docs/benchmarks.md, same section)
    planes: int = 1
    # x quantized once per token by ops.QuantizeX (its own dispatch) and copied into workgroup memory,
    # rather than quantized by every workgroup (matvec_q4s.wgsl.j2's prestaged): the matvecs alone run 9-27%
    # faster so, but an extra dispatch per matvec costs more than that in a decode step on Dawn (docs/
    # benchmarks.md, "H200: x quantized once per token for the decode matvecs"); where the residual add before
    # writes x in its epilogue instead it pays (KernelPolicy.prestage, prestage_auto)
    prestaged: bool = False

    def __post_init__(self) -> None:
        if self.planes not in (1, 2):
            raise ValueError(f"StagedTiling.planes must be 1 or 2, not {self.planes!r}")

    split_k = True  # (threads split K, as MatvecTiling's split_k)

    def rows_per_group(self, K: int) -> int:
        return (self.wg // self.lanes_for(K)) * self.rows

    def emit_refusal(self, K: int, parts: list[int], accumulate: bool, glu: str | None) -> str | None:
        """Why matvec_q4s with this tiling cannot write the next prestaged matvec's x in its epilogue
        (emit_next), or None where it can: each workgroup must own exactly one 32-block of its output (RPW ==
        32, whole blocks), that output either the residual x one matrix adds into (accumulate: w_down, wo) or
        a fused gate/up's GLU output (glu, not accumulating: w_down's x), and the next K a whole number of
        256-weight units."""
        rpw, n = self.rows_per_group(K), parts[0]
        if glu:
            if accumulate or len(parts) != 2 or parts[1] != n:
                return "a glu emit_next needs gate and up of one height, writing (not adding into) y"
        elif len(parts) != 1 or not accumulate:
            return "emit_next needs one matrix adding into the residual (accumulate) or a fused gate/up (glu)"
        if rpw != 32:
            return f"emit_next needs 32 rows per workgroup (one block of the next x), not {rpw}"
        if n % 256:
            return f"emit_next needs N % 256 == 0 (the next matvec's K), not N = {n}"
        return None

    def lanes_for(self, K: int) -> int:
        return min(self.lanes, 1 << ((K // 256).bit_length() - 1))

    def groups(self, n: int, K: int) -> int:
        return _ceil_div(n, self.rows_per_group(K))

    def shared_bytes(self, K: int) -> int:
        """Workgroup memory: 17 vec4 of q (per plane) and 9 vec2 of scales per unit, one f32 per
        accumulator (2 * rows + 2 of them)."""
        return (K // 256) * (self.planes * 17 * 16 + 9 * 8) + 4 * self.wg * (2 * self.rows + 2)


@dataclass(frozen=True)
class MatmulTiling:
    """Prefill on GPUs (matmul.wgsl.j2): register tiles."""

    tm: int = 32  # tokens per tile
    tn: int = 32  # weight rows per tile
    tk: int = 32  # K slab width (multiple of 4)
    rm: int = 4  # tokens per thread
    rn: int = 4  # rows per thread


@dataclass(frozen=True)
class MatmulRowsTiling:
    """Prefill on CPU adapters (matmul_rows.wgsl.j2): each lane owns rows x tm outputs."""

    wg: int = 8  # lanes per workgroup
    rows: int = 8  # rows per lane: each activation load serves this many rows
    tm: int = 4  # tokens per lane: each weight word serves this many tokens
    # K, row bytes and accumulate read at run time: one pipeline for every K of a weight type's unit
    # layout (SwiftShader compiles each in ~0.4-0.65 s, serially, before the first token)
    shape_at_run_time: bool = False
    # Q4_1 (other types ignore it): a unit's weights unpacked to f32 once per row, before the loop over
    # the lane's tokens, rather than in each token's dot product (SWIFTSHADER_MATMUL_TABLE)
    dequant: bool = False
    # the lane's rows walked by a loop rather than unrolled (accumulators in an array): a source rows
    # times shorter, for SwiftShader's compile (SWIFTSHADER_MATMUL_TABLE)
    row_loop: bool = False


@dataclass(frozen=True)
class MatmulI8Tiling:
    """Prefill through packed 8-bit dot products (matmul_i8.wgsl.j2 after quantize_i8.wgsl.j2): x is
    quantized per 32-block to int8 once per dispatch pair, and each 32-block of a row and a token is
    8 dot4I8Packed. stage: workgroup tiles of tm x tn (GPUs) or barrier-free lanes (CPU adapters)."""

    stage: bool = True
    tm: int = 64  # staged: tokens per workgroup tile (a 128-token chunk: 2 tiles)
    tn: int = 64  # staged: rows per workgroup tile
    rm: int = 4  # tokens per thread: each weight vec4 read serves rm tokens
    rn: int = 4  # rows per thread: each activation vec4 read serves rn rows
    kb: int = 2  # staged: 32-blocks per K step (between barriers), where it divides K / 32
    pf: bool = False  # staged: the next K step's loads into registers before this step's dot products
    wg: int = 8  # not staged: lanes per workgroup
    planes: int = 2  # int8 planes of x: 2 adds the rounding residual (16-bit-like x; 1 plane moved
    # SmolLM2's logits ~0.7 from transformers' against 0.008 in f32: docs/benchmarks.md)

    def shared_bytes(self) -> int:
        """Staged: the workgroup memory matmul_i8.wgsl.j2 declares (x's planes and scales, W's words and
        (d, m)) for a K step of kb blocks."""
        return (
            16 * 2 * self.planes * self.kb * self.tm
            + 8 * self.kb * self.tm
            + 16 * 2 * self.kb * self.tn
            + 8 * self.kb * self.tn
        )

    def groups(self, n: int, T: int) -> tuple[int, int]:
        if self.stage:
            return _ceil_div(n, self.tn), _ceil_div(T, self.tm)
        return _ceil_div(n, self.wg * self.rn), _ceil_div(T, self.rm)


@dataclass(frozen=True)
class SubgroupTile:
    """What the subgroup-matrix matmuls' tilings share: a workgroup of sg_m x sg_n subgroups of 32, each
    owning ti x tj 16x16 tiles of y, walks K in steps of kb 32-blocks."""

    sg_m: int = 2  # subgroups along tokens
    sg_n: int = 2  # subgroups along rows
    ti: int = 2  # 16-token tiles per subgroup: each weight matrix loaded serves ti multiplies
    tj: int = 2  # 16-row tiles per subgroup: each x matrix loaded serves tj multiplies
    kb: int = 2  # 32-blocks per K step (between staging barriers), where it divides K / 32

    @property
    def tm(self) -> int:
        return 16 * self.sg_m * self.ti

    @property
    def tn(self) -> int:
        return 16 * self.sg_n * self.tj

    @property
    def threads(self) -> int:
        """A workgroup's threads: sg_m x sg_n subgroups of 32."""
        return 32 * self.sg_m * self.sg_n


@dataclass(frozen=True)
class MatmulSgmatTiling(SubgroupTile):
    """Prefill on subgroup matrices (matmul_sgmat.wgsl.j2, tensor cores through Dawn's
    chromium-experimental-subgroup-matrix) after quantize_i8.wgsl.j2, as matmul_i8 (the tile: SubgroupTile)."""

    planes: int = 2  # int8 planes of x (as MatmulI8Tiling's)

    def groups(self, n: int, T: int) -> tuple[int, int]:
        return _ceil_div(n, self.tn), _ceil_div(T, self.tm)

    def shared_bytes(self) -> int:
        """Workgroup memory: staged x and W rows (4 words of padding each), their scales, and one
        block's integers of every tile."""
        return 4 * (
            self.tm * (8 * self.kb * self.planes + 4)
            + self.tn * (8 * self.kb + 4)
            + self.kb * (self.tm + self.tn)
            + self.sg_m * self.sg_n * self.ti * self.tj * 256
        )


@dataclass(frozen=True)
class MatmulSgmatF16Tiling(SubgroupTile):
    """Prefill on f16 subgroup matrices (matmul_sgmat_f16.wgsl.j2): weights dequantized to f16 tiles in
    workgroup memory (block scales applied while staging), x / s_t (s_t: its token's power-of-two scale)
    rounded to f16 there too, f32 accumulators over the whole K (the tile: SubgroupTile)."""

    # double-buffered K steps (one barrier a step, the next step's loads in flight): 0.67x the single
    # buffer's speed on the H200 (docs/benchmarks.md: twice the workgroup memory, registers live across
    # the multiplies), so off
    db: bool = False
    # single buffer with the next step's global loads issued before the multiplies (in flight over them),
    # stored after the barrier: 1.01-1.07x the speed without at the 512-token shapes of Llama 1B / 8B
    # (docs/benchmarks.md, "f16 tiles by shape"); SGMAT_F16_TILES sets it, the bare default stays without
    pf: bool = False
    # split-K: workgroups per output tile, each over a K slice, their partial tiles added by splitk_sum
    # (one more dispatch), for more workgroups where a chunk's tiles alone leave SMs idle; sgmat_f16_tiling
    # keeps it within K's steps and the partials' buffer. 1 in the planner's tiles: on the H200, split on
    # every linear, 1B and 8B prefills lost (gate_up pays the partials' traffic), only qkv gained
    # (docs/benchmarks.md, "split-K for shapes that leave SMs idle"); KernelPolicy.sgmat_f16_splits asks for it
    splits: int = 1
    # x arrives as f16(x / s_t), written by the row_scale pass before (its x16 option; 2 bytes a value more
    # scratch), and is staged by plain copies (the template's xsrc="f16"): the same f16 values, so the same y,
    # at 1.03-1.22x the speed at the 512-token shapes of Llama-3.1-8B on the H200 (docs/benchmarks.md,
    # "copy-only staging ... measured"); SGMAT_F16_TILES sets it, the bare default stays without
    x16: bool = False
    # the multiplies in a switch over the subgroup, one case each (the template's sgc), so that every matrix
    # load is at a constant offset: Tint's robustness transform (on in every browser) wraps a subgroup-matrix
    # load at a run-time offset in a bounds check, which cost the kernel 13-18% on the H100 (1.15-1.22x with
    # it; without robustness it is 2-5% slower: docs/benchmarks.md, "what robustness costs");
    # SGMAT_F16_TILES sets it, the bare default stays without
    sgc: bool = False
    # the subgroups go out through the result slices in this many turns (the template's out_turns), each
    # turn's subgroups sharing sg_m x sg_n / out_turns slices of 1 KiB: a 512-thread tile fits 48 KiB at kb 2
    out_turns: int = 1

    def __post_init__(self) -> None:
        if self.out_turns < 1 or (self.sg_m * self.sg_n) % self.out_turns:
            raise ValueError(f"MatmulSgmatF16Tiling.out_turns must divide sg_m x sg_n, not {self.out_turns!r}")

    def groups(self, n: int, T: int) -> tuple[int, int, int]:
        return _ceil_div(n, self.tn), _ceil_div(T, self.tm), self.splits

    def shared_bytes(self) -> int:
        """Workgroup memory: f16 rows of x and W (8 f16 of padding each), twice when double-buffered,
        and one f32 16x16 tile per subgroup of a turn on the way out."""
        slices = self.sg_m * self.sg_n // self.out_turns
        return 2 * (2 if self.db else 1) * (self.tm + self.tn) * (32 * self.kb + 8) + 4 * 256 * slices


@dataclass(frozen=True)
class StepTiling:
    """attention_step's shape: threads per workgroup, positions per pass, workgroups per kv head
    (split-K slices, merged in the same dispatch) and the fewest positions a slice takes."""

    wg: int = 128
    chunk: int = 32
    splits: int = 32
    min_split: int = 32


@dataclass(frozen=True)
class PrefillTiling:
    """attention_prefill's shape on GPUs: tokens per workgroup, key positions per tile (staged in
    workgroup memory: 2 * tk * head_dim floats) and lanes per query row: 1 is a thread per row holding
    all of q and acc; L > 1 splits a row's head_dim over L consecutive invocations of one subgroup,
    its scores summed by subgroupShuffleXor (L a power of two dividing head_dim / 4); with L > 1 a
    thread may take `rows` query rows (of tq * group), each K/V value it reads from workgroup memory
    serving them all. sgmat: the other kernel, attention_prefill_sgmat.wgsl.j2 (f16 subgroup matrices; tq
    tokens x group heads in subgroups of 16 query rows, tk keys a tile; lanes and rows unused).
    unroll: CPU adapters' form only (the template's `cpu_adapter`): 0 holds a row's q and acc as head_dim / 4
    vec4 registers, every dim unrolled; U > 0 keeps them in arrays and walks them U vec4s a loop pass
    (SWIFTSHADER_PREFILL_UNROLL)."""

    tq: int = 16
    tk: int = 32
    lanes: int = 1
    rows: int = 1
    sgmat: bool = False
    unroll: int = 0
    # sgmat only: a tile's products in a switch over the subgroup (the template's sgc), every matrix load and
    # store of the key walk at a constant offset, as MatmulSgmatF16Tiling.sgc (Tint's robustness transform wraps
    # one at a run-time offset in a bounds check); off until measured against the form without it
    sgc: bool = False
    # sgmat only: the key walk twice (the template's twopass): the rows' max scores first, then P V into O's
    # column blocks held as result matrices, never rescaled (no store, barrier pair and fold of O's blocks a
    # tile; Q K^T and K's staging twice); built to be measured against one pass, off until it is
    twopass: bool = False
    # sgmat only, one pass: each workgroup's key walk in this many slices, one workgroup each (the dispatch's
    # z), their partial O and (m, l) merged by attention_combine (a second dispatch). A 512-token prompt's last
    # query tile walks 16 key tiles in series (8B: 9 GPU ms over 32 layers, ~17 us a tile); slices shorten that
    # walk. Measured on the H100 (docs/benchmarks.md, "Measured on the H100: the prompt's key slices ..."): 8B
    # attention 8.82 GPU ms unsplit, 8.52 / 8.80 / 10.49 at 2 / 4 / 8 slices: the walk is not what bounds it,
    # each tile's own work is. 1 (off)
    splits: int = 1
    # sgmat only, one pass, no slices: O's column blocks held as result matrices over the walk and rescaled only
    # when a row's max grows by more than this (a natural log, 1..11: P <= e^lazy must stay within f16), the
    # template's lazy; S and P in workgroup memory key-major (the softmax lanes' reads without bank conflicts).
    # Built to be measured against the default one pass (4 barriers a tile instead of 11 at head_dim 128);
    # 0 (off) until it is
    lazy: int = 0

    def sgmat_shared_bytes(self, head_dim: int, group: int) -> int:
        """attention_prefill_sgmat's workgroup memory: the f16 K/V tile (rows padded by 8), each subgroup's
        f32 scores and f16 P, each row's rescale and its q scale (s, 1 / s), 256 zeros."""
        rows = self.tq * group
        return 2 * 2 * self.tk * (head_dim + 8) + rows * self.tk * 4 + rows * (self.tk + 8) * 2 + rows * 12 + 1024


# The aligned 4-bit kernel (matvec_q4.wgsl.j2): its weight types and default tiling.
Q4_TYPES = (GGMLType.Q4_0, GGMLType.Q4_1, GGMLType.Q4_K)
# ... and the block types it also reads in 64-weight units (Q5_0, Q8_0): rows the staged kernel's 256-weight
# units do not divide (Gemma-3's 640-wide Q5_0 / Q8_0 Q/K/V and gate/up, its Q8_0 head; SmolLM2's 576-wide Q8_0
# head), which the generic matvec ran one dispatch per matrix, fusing nothing and folding no norm.
MATVEC_Q4_TYPES = Q4_TYPES + (GGMLType.Q5_0, GGMLType.Q8_0)
Q4_TILING = MatvecTiling(wg=64, rows=4)
# The staged kernel (matvec_q4s.wgsl.j2) also takes Q8_0 (int8 weights: one dot4I8Packed a word)
# and Q6_K (its unaligned super-blocks funnel-shifted into place).
STAGED_TYPES = Q4_TYPES + (GGMLType.Q8_0, GGMLType.Q6_K)
# CPU adapters: 32 lanes per workgroup (4- or 8-wide SIMD), 2 rows per lane; SwiftShader wants more
# rows per lane to reuse x (docs/benchmarks.md).
CPU_TILING = MatvecTiling(wg=32, rows=2, split_k=False)
SWIFTSHADER_TILING = MatvecTiling(wg=32, rows=8, split_k=False, shape_at_run_time=True)
# ... but 4 rows for Q8_0 (a lane's 8 rows held 8 x 17 words of a unit): SmolLM2's LM head (Q8_0,
# 49152 x 576) compiles in ~0.35 s instead of ~1 s, on the returning visit's serial chain of compiles
# before the first token, and runs as fast (docs/benchmarks.md, "SwiftShader: the first token's compiles and
# prefill matmuls").
SWIFTSHADER_Q8_TILING = MatvecTiling(wg=32, rows=4, split_k=False, shape_at_run_time=True)
# sampling_draw's one workgroup on SwiftShader: 16 threads, not 256. SwiftShader runs a workgroup on one
# core anyway, and its compiler takes ~0.44 s for the kernel at 256 threads against ~0.18 s at 4-16 (the
# first token waits for it on a returning visit); the draw itself is as fast or faster (docs/benchmarks.md,
# "SwiftShader: sampling_draw's workgroup").
SWIFTSHADER_DRAW_WG = 16
DRAW_WG = 256
# attention_prefill's CPU form on SwiftShader: q and acc in arrays walked one vec4 a loop pass, not all
# head_dim / 4 unrolled into registers: SmolLM2's kernel compiles in ~40-50 ms instead of ~180-200 ms (on a
# returning visit the first prefill waits for the layers' kernels compiling one after another) and gives
# the same outputs; the prefill's attention takes ~50 instead of ~38 ms (30 layers, 37 tokens). 2, 4 or 8
# vec4s a pass compile slower and run slower still (docs/benchmarks.md, "SwiftShader: attention_prefill's
# compile").
SWIFTSHADER_PREFILL_UNROLL = 1


def sampling_draw_wg(adapter: Adapter) -> int:
    return SWIFTSHADER_DRAW_WG if adapter.swiftshader else DRAW_WG


# The packed-dot prefill (matmul_i8) reads these types.
I8_TYPES = (GGMLType.Q4_0, GGMLType.Q4_1, GGMLType.Q8_0, GGMLType.Q4_K, GGMLType.Q6_K)
# ... and the subgroup-matrix prefill (matmul_sgmat) these (whole 32-blocks of signed int8 once unpacked).
SGMAT_TYPES = (GGMLType.Q4_0, GGMLType.Q8_0)
# The f16 one (matmul_sgmat_f16) dequantizes what matmul_i8's block loader unpacks: w = d q + m (Q6_K:
# a scale per 16-element half).
SGMAT_F16_TYPES = I8_TYPES
# ... on the f16 x f16 -> f32 config of this shape: (component, result, M, N, K) as the adapter lists it
SGMAT_F16_CONFIG = ("f16", "f32", 16, 16, 16)


# -- inputs -------------------------------------------------------------------------------------------
# The smallest subgroup of GPU vendors (PCI ids) whose size wgpu-native does not report (it says 4
# for every adapter, an H100's included): NVIDIA 32, AMD 32 (wave32; GCN 64), Apple 32, Intel 8.
_VENDOR_SUBGROUP_MIN = {0x10DE: 32, 0x1002: 32, 0x106B: 32, 0x8086: 8}


def subgroup_min_size(device: Any) -> int:
    """The adapter's smallest subgroup as far as known: a device's `subgroup_min_size` where the
    backend sets one, else native wgpu's adapter info (wgpu-py 0.32 spells the key
    "stackgroup_min_size") or the vendor's known minimum, whichever is larger; 0 when unknown."""
    size = getattr(device, "subgroup_min_size", None)
    if size:
        return int(size)
    info: Any = getattr(getattr(getattr(device, "raw", None), "adapter", None), "info", None)
    if not hasattr(info, "get"):
        return 0
    said = int(info.get("subgroup_min_size", info.get("stackgroup_min_size", 0)) or 0)
    return max(said, _VENDOR_SUBGROUP_MIN.get(int(info.get("vendor_id", 0) or 0), 0))


def _sgmat(device: Any, config: tuple[str, str, int, int, int]) -> bool:
    """The subgroup-matrix feature was granted with `config`, on subgroups of exactly 32 (the kernels give
    each lane 8 elements of a 16x16 tile)."""
    return (
        SGMAT_FEATURE in getattr(device, "features", ())
        and config in getattr(device, "subgroup_matrix_configs", ())
        and tuple(getattr(device, "subgroup_sizes", ())) == (32, 32)
    )


@dataclass(frozen=True)
class Adapter:
    """What kernel choice needs to know of a device."""

    cpu: bool = False  # a CPU adapter (lavapipe, SwiftShader): workgroup barriers cost ~10x
    swiftshader: bool = False
    # storageBarrier() is a device-scope fence in the shader compiler's output (see Adapter.of):
    # attention_step's merge of its slices across workgroups needs one
    device_scope_barrier: bool = True
    packed_dot: bool = True  # WGSL's packed_4x8_integer_dot_product (dot4I8Packed)
    subgroups: bool = False  # the subgroups feature was granted
    subgroup_min: int = 0  # the smallest subgroup, where known
    workgroup_storage: int = DEFAULT_WORKGROUP_STORAGE  # bytes of workgroup memory
    invocations: int = 256  # threads per workgroup
    storage_buffers: int = 8  # storage bindings per shader stage
    # Dawn's chromium-experimental-subgroup-matrix granted with an i8 x i8 -> i32 16x16x32 config, and
    # subgroups of exactly 32 (matmul_sgmat gives each lane 8 elements of a 16x16 tile)
    subgroup_matrix: bool = False
    f16: bool = False  # shader-f16 was granted
    # ... and the f16 x f16 -> f32 16x16x16 config with shader-f16 (matmul_sgmat_f16; Dawn on NVIDIA lists
    # it only with the vulkan_enable_f16_on_nvidia toggle; Apple, Intel and AMD by default)
    f16_subgroup_matrix: bool = False

    @classmethod
    def of(cls, device: Any) -> "Adapter":
        info, limits = device.info, getattr(device, "limits", {})
        # naga always has dot4I8Packed; a browser device lists its language features
        # (navigator.gpu.wgslLanguageFeatures) as `wgsl_language_features`
        features = getattr(device, "wgsl_language_features", None)
        return cls(
            cpu=bool(info.is_fallback),
            swiftshader="swiftshader" in f"{info.architecture} {info.description}".lower(),
            # naga (native wgpu) writes storageBarrier() to SPIR-V as OpControlBarrier with memory scope
            # Device; Tint (Dawn, Chrome) with memory scope Workgroup (its SPIR-V writer's tests expect
            # `OpControlBarrier %uint_2 %uint_2 %uint_72`), all WGSL promises. Over Metal / D3D12 naga's
            # barrier is not checked, so only native wgpu over Vulkan counts.
            device_scope_barrier=info.backend == "native" and info.api == "vulkan",
            packed_dot=features is None or "packed_4x8_integer_dot_product" in features,
            subgroups=bool(getattr(device, "has_subgroups", False)),
            subgroup_min=subgroup_min_size(device),
            workgroup_storage=int(limits.get("max_compute_workgroup_storage_size", DEFAULT_WORKGROUP_STORAGE)),
            invocations=int(limits.get("max_compute_invocations_per_workgroup", 256)),
            storage_buffers=int(limits.get("max_storage_buffers_per_shader_stage", 8)),
            subgroup_matrix=_sgmat(device, ("i8", "i32", 16, 16, 32)),
            f16=bool(getattr(device, "has_f16", False)),
            f16_subgroup_matrix=_sgmat(device, SGMAT_F16_CONFIG) and bool(getattr(device, "has_f16", False)),
        )

    def fits(self, workgroup_bytes: int) -> bool:
        """Whether a kernel's workgroup memory fits this adapter (the one place this is checked)."""
        return workgroup_bytes <= self.workgroup_storage


def parse_staged_tilings(spec: str) -> tuple[tuple[str, StagedTiling], ...]:
    """bench's --staged-tiling: "WG,LANES,ROWS[,PREFETCH[,PLANES]]" for all, then optional ";glu=..." (fused
    gate/up groups), ";qkv=..." (fused groups of several matrices without a GLU: Q/K/V), ";tall=..." (N > 65536:
    LM heads), ";k<K>=..." (rows of exactly K, e.g.
    k8192=256,32,1) and ";wide=..." (K > 8192)."""
    out = []
    for item in filter(None, spec.split(";")):
        key, v = item.split("=", 1) if "=" in item else ("all", item)
        f = [int(x) for x in v.split(",")]
        out.append(
            (key, StagedTiling(f[0], f[1], f[2], bool(f[3]) if len(f) > 3 else False, f[4] if len(f) > 4 else 1))
        )
    return tuple(out)


# KernelPolicy.prefill's choices (bench --prefill-kernel)
PREFILL_KERNELS = ("auto", "sgmat", "sgmat-f16", "i8x2", "i8", "f32")
PREFILL_ATTENTION_KERNELS = ("auto", "lanes", "sgmat-f16")
# "auto" takes attention_prefill_sgmat at these head dims: on the H200 (Dawn) it was right (prefill_attention_check
# --dawn) but slower than the lanes form at head_dim 64 (1B: 3.18 vs 2.25 ms a 512-token chunk; 2.5 vs 2.0 in two
# passes on the H100); at 128 (8B) its form with the products at constant offsets (sgc) took 8.7 GPU ms against the
# lanes form's 11.1 a 512-token prompt, two runs each alternating on the H100 (docs/benchmarks.md, "The peer table
# with one int8 plane in the prompt's matmuls"). Not 256 (Gemma-3): neither timed nor checked on a device there.
# "sgmat-f16" asks for it at any head_dim, "lanes" never.
SGMAT_ATTENTION_HEAD_DIMS = frozenset({128})


# KernelPolicy.fold_norm_max_k's default: matvec_q4 (rows that are not whole 256-weight units: SmolLM2's 576,
# Gemma-3-270M's 640) folds the RMSNorm before a fused Q/K/V or gate/up where rows are this short, each workgroup
# summing x^2 itself, instead of the norm's own dispatch. H100, Dawn, SmolLM2's shape (random Q4_1), 128 tokens,
# four alternating pairs in one call, default / folded: 499.5 / 625.9, 514.5 / 625.9, 477.5 / 623.1, 563.7 / 547.2
# tok/s (245 -> 185 dispatches a token; docs/benchmarks.md, "H100: norms folded into SmolLM2's matvecs"). At
# K = 4096 folding cost more than the norm's dispatch (H100, "H100 after the decode-kernel work"); the staged kernel
# (matvec_q4s) folds at any K.
FOLD_NORM_MAX_K = 1024


@dataclass(frozen=True)
class KernelPolicy:
    """The choices a caller may override; the defaults are the measured best (docs/benchmarks.md)."""

    staged_matvec: bool = True  # the staged kernel where it applies; False: matvec_q4 / the generic one
    staged_tilings: tuple[tuple[str, StagedTiling], ...] = ()  # overrides by op kind (parse_staged_tilings)
    # x's int8 planes in every staged tiling, table's and overrides'. None: the model's width decides where
    # no staged_tilings are given (models/families.build_model: staged_planes_auto), else each tiling's own
    staged_planes: int | None = None
    # matmul_i8's int8 planes of x under prefill "auto" / "sgmat" / "sgmat-f16" (the prompt's matmuls without
    # subgroup matrices). None: 2, unless models/families.build_model resolves it by the model's width
    # (prefill_planes_auto); prefill "i8" / "i8x2" force 1 / 2
    prefill_planes: int | None = None
    # StagedTiling.prestaged in the planner's staged tilings; the residual adds before a norm-folded group
    # then write its x in their epilogue where they can (models/layer.link_emits), and stage their own x
    # (BoundLinear.emit_into); the embedding writes layer 0's x and the last residual add the LM head's, the
    # final norm folded into the head (Decoder.link_emits). None: the model decides (prestage_auto)
    prestage: bool | None = None
    # single-token attention writes its output also as wo's quantized x (attention_combine, or attention_step
    # where it merges), wo reading it prestaged (models/layer.link_attention_emits). None: attention_emit_auto
    # (off: it did not pay on the H200)
    attention_emit: bool | None = None
    # single-token fused gate/up (its GLU) also writes w_down's quantized x in its epilogue (matvec_q4s's
    # emit_next, no norm), w_down reading it prestaged (models/layer.link_emits); the gate/up tiling then takes
    # 32 rows a workgroup (glu_emit_tiling). None: glu_emit_auto (off: not yet measured on the device)
    glu_emit: bool | None = None
    q4_tiling: MatvecTiling = Q4_TILING  # matvec_q4's
    gpu_tiling: MatvecTiling = field(default_factory=MatvecTiling)  # the generic matvec's on GPUs
    fold_norm_max_k: int = FOLD_NORM_MAX_K  # matvec_q4 folds a preceding RMSNorm for rows this short
    # prefill: "auto" takes matmul_sgmat_f16 where the adapter has f16 subgroup matrices, else matmul_i8
    # where I8 pays, with prefill_planes int8 planes of x (by the model's width); "i8x2" (two planes) and
    # "i8" (one: faster, less accurate) force it wherever it can run; "f32" keeps matmul / matmul_rows
    # "sgmat" takes matmul_sgmat (tensor cores) where the adapter has i8 subgroup matrices, else matmul_i8;
    # "sgmat-f16" only matmul_sgmat_f16 (as "auto" does), never matmul_sgmat
    prefill: str = "auto"
    sgmat_tiling: MatmulSgmatTiling | None = None  # matmul_sgmat's tile (kb drops to 1 where K % 64 != 0)
    sgmat_f16_tiling: MatmulSgmatF16Tiling | None = None  # matmul_sgmat_f16's (kb as sgmat_tiling's)
    # matmul_sgmat_f16's split-K slices in every tile, the planner's or the policy's (None: the tile's own)
    sgmat_f16_splits: int | None = None
    # the prompt's gate and up in one matmul_sgmat_f16 or matmul_i8 dispatch with the GLU in its epilogue
    # (sgmat_group_tiling, i8_group_tiling); False: two matmuls and the GLU's own pass. On: with prefill_qkv the 8B
    # prefill 1.07-1.14x, 1B 1.3-1.7x on the H200 (docs/benchmarks.md, "The prompt's fused groups measured ...")
    prefill_glu: bool = True
    # the prompt's Q/K/V (of one type) in one matmul_sgmat_f16 or matmul_i8 dispatch (sgmat_group_tiling,
    # i8_group_tiling); False: a matmul a matrix. Measured with prefill_glu (above)
    prefill_qkv: bool = True
    i8_tiling: MatmulI8Tiling | None = None  # matmul_i8's tile on GPUs (kb drops to 1 where K % 64 != 0)
    fused_attention: bool | None = None  # attention_step for single tokens (None: where it applies)
    # attention_step merges its split-K slices itself (one dispatch; needs a device-scope
    # storageBarrier) or leaves them to attention_combine (None: by Adapter.device_scope_barrier)
    step_merge: bool | None = None
    step_tiling: StepTiling | None = None  # attention_step's (None: by the number of kv heads)
    prefill_attention: PrefillTiling | None = None  # attention_prefill's on GPUs (None: prefill_tiles' rule)
    # prompt attention: "sgmat-f16" requires attention_prefill_sgmat (f16 subgroup matrices), "lanes" never
    # takes it (attention_prefill's GPU forms), "auto" where the adapter has them at SGMAT_ATTENTION_HEAD_DIMS
    prefill_attention_kernel: str = "auto"
    # the KV cache's element: "auto" (kv_cache_dtype's rule), "f32" (tests that compare with
    # transformers' f32 cache to 1e-5 rather than f16's 1e-3), "f16" (needs shader-f16) or "f16x2" (f16
    # pairs packed in u32s, any adapter; head_dim % 4 == 0)
    kv_cache: str = "auto"

    def __post_init__(self) -> None:
        if self.prefill not in PREFILL_KERNELS:
            raise ValueError(f"KernelPolicy.prefill must be one of {', '.join(PREFILL_KERNELS)}, not {self.prefill!r}")
        if self.prefill_attention_kernel not in PREFILL_ATTENTION_KERNELS:
            raise ValueError(
                f"KernelPolicy.prefill_attention_kernel must be one of {', '.join(PREFILL_ATTENTION_KERNELS)}, "
                f"not {self.prefill_attention_kernel!r}"
            )
        if self.kv_cache not in ("auto", "f32", "f16", "f16x2"):
            raise ValueError(f"KernelPolicy.kv_cache must be auto, f32, f16 or f16x2, not {self.kv_cache!r}")
        t = self.prefill_attention
        if t is not None and (
            min(t.tq, t.tk, t.lanes, t.rows) < 1
            or t.lanes & (t.lanes - 1)
            or t.lanes > 32
            or (t.rows > 1 and t.lanes == 1)
        ):
            raise ValueError(
                f"KernelPolicy.prefill_attention needs tq, tk, rows >= 1, lanes a power of two <= 32 "
                f"and rows 1 where lanes is: {t}"
            )
        if t is not None and not t.sgmat and (t.sgc or t.twopass or t.splits != 1 or t.lazy):
            # attention_prefill_sgmat's options: the lanes form has none of them (they were silently ignored)
            raise ValueError(f"KernelPolicy.prefill_attention: sgc, twopass, splits and lazy need sgmat: {t}")
        if self.sgmat_f16_splits is not None and self.sgmat_f16_splits < 1:
            raise ValueError(f"KernelPolicy.sgmat_f16_splits must be >= 1, not {self.sgmat_f16_splits!r}")

    def staged_override(self, key: str) -> StagedTiling | None:
        return dict(self.staged_tilings).get(key)


DEFAULT_POLICY = KernelPolicy()

# KernelPolicy.prestage's default for a model whose residual adds write the next group's quantized x
# (LlamaModel with its dense MLP, Gemma 1: models/layer.link_emits): on from this width. H200, decode tok/s on / off in
# alternating pairs, one device call (docs/benchmarks.md, "H200: the residual add writes the next matvec's x"):
# 8B (dim 4096) 338.8 / 302.0 and 288.3 / 254.0 on Dawn, 300.0 / 266.1 natively (+12-14%); 1B (dim 2048)
# 559.3 / 620.1 and 490.6 / 514.8 on Dawn, 710.7 / 671.0 natively: not on there.
PRESTAGE_MIN_DIM = 4096


def prestage_auto(dim: int, dense_mlp: bool) -> bool:
    return dense_mlp and dim >= PRESTAGE_MIN_DIM


# KernelPolicy.staged_planes' default for a model narrower than this: two int8 planes of x in its staged
# matvecs. Real small models' decode logits: SmolLM2-135M (width 576) 9.1e-3 of max |logit| from transformers
# with one plane, 3.5e-4 with two; Gemma-3-270M (640) 1.6e-2 / 1.8e-4 (docs/benchmarks.md, "Real models through
# the GPU paths on lavapipe"). Cost, H100 on Dawn, SmolLM2's shape (random Q4_1), three alternating pairs in one
# call: 568.6 / 556.8, 572.8 / 556.9, 572.1 / 555.1 tok/s (-2.8%; section "H100: mixed-type Q/K/V ..."); at 1B
# and 8B two planes cost 7-10% of decode (same section), so wider models keep one (the table's own).
TWO_PLANES_BELOW_DIM = 1024


def staged_planes_auto(dim: int) -> int | None:
    """KernelPolicy.staged_planes where the policy leaves it to the model (None): 2 below TWO_PLANES_BELOW_DIM,
    else None (each staged tiling's own planes)."""
    return 2 if dim < TWO_PLANES_BELOW_DIM else None


def prefill_planes_auto(dim: int) -> int:
    """KernelPolicy.prefill_planes where the policy leaves it to the model (None): the decode's rule
    (staged_planes_auto) for the prompt's matmul_i8 too. Below TWO_PLANES_BELOW_DIM two planes keep the real small
    models' prefill logits within 2e-3 of transformers (one: 2-6e-2; docs/benchmarks.md, "Prefill's int8 planes by
    op"); from that width one plane per 32-block, llama.cpp's own rule for its integer matmuls (q8_1 activations),
    ~1.7x the two planes' speed at 8B's gate/up (56 vs 32 TOPS on the H100: docs/benchmarks.md, "H100: the peer
    table in one call, spread and wsp measured")."""
    return 2 if dim < TWO_PLANES_BELOW_DIM else 1


def attention_emit_auto(policy: KernelPolicy) -> bool:
    """Whether attention writes wo's quantized x (KernelPolicy.attention_emit; off unless asked). H200, 8B Q4_0
    (docs/benchmarks.md, "H200: attention writes wo's quantized x"): wo prestaged saves 0.9-1.1 us a layer, the
    emitting attention costs 1.0-1.4 us more (the block quantized by one thread after a barrier), chains
    attention -> wo 38.92 -> 38.57 us (combine form) and 31.64 -> 32.05 us (merge form); in-model Dawn decode
    on / off 351.9, 350.6, 347.6, 270.2 / 331.2, 352.2, 357.3, 352.7 tok/s: no gain."""
    return bool(policy.attention_emit)


def glu_emit_auto(policy: KernelPolicy) -> bool:
    """Whether the fused gate/up writes w_down's quantized x in its epilogue (KernelPolicy.glu_emit; off unless
    asked). What it trades: w_down reading x prestaged (8B alone on the H200: 16.69 -> 14.24 us) against gate/up's
    workgroups of 32 rows instead of 16 (glu_emit_tiling) and the block quantized by one thread after a barrier in
    each. Whole-model decode on the H100 (docs/benchmarks.md, "The prompt's fused groups as one matmul each ..."): 8B Q4_0
    0.974x natively and 0.989x on Dawn, 1B Q4_0 1.025-1.034x natively in two calls and unreadable on Dawn (slow
    processes): off, a 1B-only native gain of ~3% not being worth a rule by width without Dawn's reading."""
    return bool(policy.glu_emit)


def glu_emit_tiling(t: StagedTiling, K: int) -> StagedTiling:
    """A fused gate/up tiling that owns 32 rows (one block of w_down's x) a workgroup, for KernelPolicy.glu_emit:
    `t` with its lanes and rows and as many threads as that takes (8B: STAGED_TABLE's (128, 8, 1), 16 rows,
    becomes (256, 8, 1)); `t` itself where it has 32 rows already or no workgroup of at most 256 threads does."""
    lanes = t.lanes_for(K)
    if t.rows_per_group(K) == 32 or (32 * lanes) % t.rows:
        return t
    wg = 32 * lanes // t.rows
    return replace(t, wg=wg) if wg <= 256 and wg & (wg - 1) == 0 else t


# -- matvec (decode: one token) -----------------------------------------------------------------------
@dataclass(frozen=True)
class StagedRow:
    """A row of the staged kernel's tiling table: the first row whose `when` holds gives the tiling."""

    # (K, N, glu, qtype, group): glu a fused gate/up, group a fused dispatch of several matrices (Q/K/V)
    when: Callable[[int, int, bool, GGMLType | None, bool], bool]
    tiling: StagedTiling


STAGED_TABLE: tuple[StagedRow, ...] = (
    # 8- and 6-bit rows of 32+ units (1B down): 16 rows a workgroup, twice the workgroups, 16 lanes
    # splitting each row
    StagedRow(
        lambda K, N, glu, q, group: not glu and K >= 8192 and q in (GGMLType.Q8_0, GGMLType.Q6_K),
        StagedTiling(256, 16, 1),
    ),
    # fused gate/up of a wide model: twice the workgroups of 16 rows each
    StagedRow(lambda K, N, glu, q, group: glu and K >= 4096, StagedTiling(128, 8, 1)),
    # fused Q/K/V (several matrices, no GLU) of rows >= 2048: twice the workgroups of 16 rows each. H100, native,
    # x prestaged, GPU us a dispatch (kernel_bench --only=prestaged_tiles, docs/benchmarks.md "Q/K/V at 16 rows a
    # workgroup"): 8B 11.74 -> 10.54, 1B 7.71 -> 6.89 (64 threads: 10.43 / 6.74; 16 lanes: 11.04 at 8B)
    StagedRow(lambda K, N, glu, q, group: group and not glu and K >= 2048, StagedTiling(128, 8, 1)),
    # a lane walks 4 or more units in turn: the next unit's loads go out before this one's math
    StagedRow(lambda K, N, glu, q, group: K // 256 >= 4 * 8, StagedTiling(256, 8, 1, prefetch=True)),
    # 256 threads as 32 teams of 8 lanes, one row each
    StagedRow(lambda K, N, glu, q, group: True, StagedTiling(256, 8, 1)),
)


def staged_tiling(
    K: int,
    glu: bool = False,
    N: int = 0,
    qtype: GGMLType | None = None,
    policy: KernelPolicy = DEFAULT_POLICY,
    group: bool = False,
) -> StagedTiling:
    """The staged kernel's tiling on GPUs for N rows of K (glu: a fused gate/up group; group: a fused group of
    several matrices, e.g. Q/K/V): the policy's override for this op kind, else the first row of STAGED_TABLE
    that applies."""
    kinds = (("glu", glu), ("qkv", group and not glu), ("tall", N > 65536), (f"k{K}", True), ("wide", K > 8192))
    for key, applies in (*kinds, ("all", True)):
        t = policy.staged_override(key) if applies else None
        if t is not None:
            break
    else:
        t = next(r.tiling for r in STAGED_TABLE if r.when(K, N, glu, qtype, group))
    t = t if policy.staged_planes is None else replace(t, planes=policy.staged_planes)
    return replace(t, prestaged=True) if policy.prestage else t


def team_subgroups(adapter: Adapter, lanes: int) -> bool:
    """Whether teams of `lanes` threads may reduce through subgroupShuffleXor: where the subgroups
    feature was granted and a team surely fits the smallest subgroup (native wgpu: the vendor's known
    minimum; browsers: GPUAdapterInfo.subgroupMinSize); an unknown size (0) never does. The staged
    kernel's teams then use it rather than workgroup memory (a little faster on an H100:
    docs/benchmarks.md, "Kernel choice"); attention_prefill's lanes per query row need it."""
    return adapter.subgroups and adapter.subgroup_min >= lanes


@dataclass(frozen=True)
class MatvecPlan:
    template: str  # matvec_q4s | matvec_q4 | matvec_rows | matvec
    tiling: MatvecTiling | StagedTiling
    x_uniform: bool = False  # matvec_rows: x bound as a uniform (CPU adapters load it once per SIMD batch)

    @property
    def fusable(self) -> bool:
        """The 4-bit / staged kernels take several matrices and a GLU in one dispatch (MatvecGroup)."""
        return self.template in ("matvec_q4s", "matvec_q4")


@dataclass(frozen=True)
class MatvecQuery:
    """One Linear's matvec: its weight, the adapter, the policy and an explicit tiling (tests, bench)."""

    adapter: Adapter
    qtype: GGMLType
    N: int
    K: int
    bias: bool
    policy: KernelPolicy
    request: MatvecTiling | StagedTiling | None

    @property
    def aligned(self) -> bool:  # matvec_q4: block rows of whole 64-weight units, no bias
        return self.qtype in MATVEC_Q4_TYPES and self.K % 64 == 0 and not self.bias

    @property
    def default_staged(self) -> StagedTiling:
        return staged_tiling(self.K, N=self.N, qtype=self.qtype, policy=self.policy)

    @property
    def staged_tiling(self) -> StagedTiling:
        return self.request if isinstance(self.request, StagedTiling) else self.default_staged

    def staged_applies(self) -> bool:
        a = self.adapter
        return (
            self.qtype in STAGED_TYPES
            and not self.bias
            and self.K % 256 == 0
            and a.packed_dot
            and (
                isinstance(self.request, StagedTiling)
                or (self.request is None and self.policy.staged_matvec and not a.cpu)
            )
            and a.fits(self.staged_tiling.shared_bytes(self.K))
        )

    @property
    def fallback(self) -> MatvecTiling | None:
        """The request where the staged kernel is not taken: a StagedTiling asked for where it cannot
        run becomes matvec_q4's tiling for 4-bit rows and no request otherwise."""
        if isinstance(self.request, StagedTiling):
            return self.policy.q4_tiling if self.aligned else None
        return self.request


@dataclass(frozen=True)
class MatvecRow:
    template: str
    when: Callable[[MatvecQuery], bool]
    tiling: Callable[[MatvecQuery], MatvecTiling | StagedTiling]


MATVEC_TABLE: tuple[MatvecRow, ...] = (
    # 4-bit, Q8_0 and Q6_K rows of whole 256-weight units on GPUs with packed 8-bit dot products, x
    # staged in workgroup memory (where it fits). x is rounded to one int8 plane per 32-block (llama.cpp's
    # q8_1 rule): the accuracy it costs on real weights (docs/benchmarks.md, "Real models through the GPU
    # paths on lavapipe"): SmolLM2's logits after a prompt run through the decode kernels 9.1e-3 of max
    # |logit| from transformers' (its w_down alone takes this kernel), 2.3e-4 without it; Gemma-3-270M
    # 1.6e-2 against 2.2e-4: 40-75x the f32 kernels' error, over the real models' 2e-3 (their prefills keep it)
    MatvecRow("matvec_q4s", MatvecQuery.staged_applies, lambda q: q.staged_tiling),
    # other 4-, 5- and 8-bit block rows of whole 64-weight units, threads splitting K
    MatvecRow(
        "matvec_q4",
        lambda q: q.aligned and (q.fallback.split_k if q.fallback else not q.adapter.cpu),
        lambda q: q.fallback or q.policy.q4_tiling,
    ),
    # CPU adapters (lavapipe, SwiftShader): whole rows per thread, no barriers
    MatvecRow(
        "matvec_rows",
        lambda q: not q.fallback.split_k if q.fallback else q.adapter.cpu,
        lambda q: q.fallback or (swiftshader_tiling(q.qtype) if q.adapter.swiftshader else CPU_TILING),
    ),
    # any type on GPUs: threads split K and reduce
    MatvecRow("matvec", lambda q: True, lambda q: q.fallback or q.policy.gpu_tiling),
)


def swiftshader_tiling(qtype: GGMLType) -> MatvecTiling:
    return SWIFTSHADER_Q8_TILING if qtype == GGMLType.Q8_0 else SWIFTSHADER_TILING


def plan_matvec(
    adapter: Adapter,
    qtype: GGMLType,
    N: int,
    K: int,
    bias: bool = False,
    policy: KernelPolicy = DEFAULT_POLICY,
    request: MatvecTiling | StagedTiling | None = None,
) -> MatvecPlan:
    q = MatvecQuery(adapter, qtype, N, K, bias, policy, request)
    row = next(r for r in MATVEC_TABLE if r.when(q))
    # CPU adapters load a uniform-buffer x once per SIMD batch, a storage x once per lane (~5x faster
    # on lavapipe; SwiftShader is slower with it): where one token's x fits a uniform binding.
    # (A uniform array's length is fixed in the source: not with K at run time.)
    tiling = row.tiling(q)
    x_uniform = (
        row.template == "matvec_rows"
        and adapter.cpu
        and not adapter.swiftshader
        and 4 * K <= MAX_UNIFORM_BINDING
        and not getattr(tiling, "shape_at_run_time", False)
    )
    return MatvecPlan(row.template, tiling, x_uniform)


def plan_fused(
    adapter: Adapter,
    plan: MatvecPlan,
    qtype: GGMLType,
    N: int,
    K: int,
    policy: KernelPolicy = DEFAULT_POLICY,
    glu: bool = True,
) -> StagedTiling | MatvecTiling:
    """The tiling of a fused dispatch whose members run `plan`, a gate/up with its GLU (glu) or several matrices
    reading one x (Q/K/V): the staged kernel's row for that group where the members have their default tiling
    and it fits, else theirs; with KernelPolicy.glu_emit (glu_emit_auto) a gate/up's row with 32 rows a
    workgroup (glu_emit_tiling: one block of w_down's x, which the epilogue then writes) where the GLU output
    is whole 256-blocks (w_down's K) and no "glu" override gives the tiling."""
    if plan.template != "matvec_q4s" or plan.tiling != staged_tiling(K, N=N, qtype=qtype, policy=policy):
        return plan.tiling
    t = staged_tiling(K, glu=glu, N=N, qtype=qtype, policy=policy, group=not glu)
    if glu and glu_emit_auto(policy) and N % 256 == 0 and policy.staged_override("glu") is None:
        t = glu_emit_tiling(t, K)
    return t if adapter.fits(t.shared_bytes(K)) else plan.tiling


def matvec_wg(template: str, tiling: MatvecTiling, qtype: GGMLType, K: int) -> int:
    """Threads of a split-K matvec's workgroup: no more than the row has units (a 4-bit kernel's
    64-weight ones, the generic kernel's 32-element blocks or 4 floats), but for matvec_q4 at least one
    per row (thread r writes row r's result) and two for the tree reduction."""
    if template == "matvec_q4":
        units = K // 64
        floor = 1 << (max(2, tiling.rows) - 1).bit_length()
        return max(min(tiling.wg, 1 << max(0, (units - 1).bit_length())), floor)
    unit = 4 if qtype in (GGMLType.F32, GGMLType.F16, GGMLType.BF16) else 32
    return min(tiling.wg, 1 << max(0, (K // unit - 1).bit_length()))


# -- matmul (prefill: a chunk of tokens) --------------------------------------------------------------
@dataclass(frozen=True)
class MatmulPlan:
    template: str  # matmul_sgmat_f16 | matmul_sgmat | matmul_i8 | matmul_rows | matmul
    tiling: MatmulSgmatF16Tiling | MatmulSgmatTiling | MatmulI8Tiling | MatmulTiling | MatmulRowsTiling


# GPUs, by the number of rows: big register tiles where a 128-token chunk still makes a few hundred
# workgroups (first row whose least N the matrix reaches).
GPU_MATMUL_TABLE: tuple[tuple[int, MatmulTiling], ...] = (
    (8192, MatmulTiling(tm=64, tn=64, tk=16, rm=8, rn=8)),
    (4096, MatmulTiling(tm=64, tn=64, tk=32, rm=4, rn=4)),
    (0, MatmulTiling()),
)
# CPU adapters, by weight type: fewer outputs per lane for wide units (a lane keeps rows x unit words
# in registers, and the unrolled shader must compile quickly).
CPU_MATMUL_TABLE: tuple[tuple[tuple[GGMLType, ...], MatmulRowsTiling], ...] = (
    (
        (GGMLType.Q2_K, GGMLType.Q3_K, GGMLType.Q4_K, GGMLType.Q5_K, GGMLType.Q6_K, GGMLType.IQ4_XS),
        MatmulRowsTiling(rows=4, tm=2),
    ),
    (
        (GGMLType.Q4_0, GGMLType.Q5_0, GGMLType.Q8_0, GGMLType.IQ4_NL, GGMLType.F32),  # units of 2 blocks / 32 bytes
        MatmulRowsTiling(rows=4),
    ),
    ((), MatmulRowsTiling()),  # () = any other type
)
# SwiftShader's rows before those (K, row bytes and accumulate at run time there): Q4_1 unpacked once per
# row and unit, not per token: SmolLM2's 37-token prefill matmuls 7-15% faster in the worker, the
# same compile time, the same bits (docs/benchmarks.md, "SwiftShader: the first token's compiles and
# prefill matmuls"); 8 tokens a lane was 30% faster still but doubled the compile (0.8 -> 1.6 s), on the
# returning visit's serial chain of compiles before the first token. lavapipe: not measured, unchanged.
# Its rows walked by a loop (row_loop): a quarter of the source, so ~0.2 s to compile instead of ~0.5-1.1,
# and, as the rows no longer cost source, 48 rows x 4 lanes a workgroup (each x load serves 48 rows):
# the matmuls ~40% faster again, the same bits (docs/benchmarks.md, "SwiftShader: matmul_rows' row loop").
# Q4_0 and Q8_0 likewise: ~45% faster at SmolLM2's shapes, about half the compile (sums of a unit's two
# blocks added to the accumulator together: ~1e-6 relative from the unrolled form's y).
SWIFTSHADER_MATMUL_TABLE: tuple[tuple[tuple[GGMLType, ...], MatmulRowsTiling], ...] = (
    ((GGMLType.Q4_1,), MatmulRowsTiling(wg=4, rows=48, tm=4, dequant=True, row_loop=True)),
    ((GGMLType.Q4_0, GGMLType.Q8_0), MatmulRowsTiling(wg=4, rows=48, tm=4, row_loop=True)),
)


def gpu_matmul_tiling(n: int) -> MatmulTiling:
    return next(t for least, t in GPU_MATMUL_TABLE if n >= least)


def cpu_matmul_tiling(qtype: GGMLType, swiftshader: bool = False) -> MatmulRowsTiling:
    table = SWIFTSHADER_MATMUL_TABLE + CPU_MATMUL_TABLE if swiftshader else CPU_MATMUL_TABLE
    tiling = next(t for types, t in table if qtype in types or not types)
    return replace(tiling, shape_at_run_time=True) if swiftshader else tiling


def i8_tiling(
    adapter: Adapter, qtype: GGMLType, K: int, N: int = 0, policy: KernelPolicy = DEFAULT_POLICY
) -> MatmulI8Tiling | None:
    """matmul_i8's tiling, or None where the policy or the weight keeps the f32 matmul: Q4_0, Q4_1, Q8_0,
    Q4_K and Q6_K rows (of whole super-blocks for the K types) where WGSL's packed_4x8_integer_dot_product
    exists; on CPU adapters not Q4_1 by default (matmul_rows already reads its word-aligned blocks well)
    nor Q6_K (not measured there)."""
    if (
        policy.prefill == "f32"
        or qtype not in I8_TYPES
        or K % (256 if qtype in (GGMLType.Q4_K, GGMLType.Q6_K) else 32)
        or not adapter.packed_dot
    ):
        return None
    planes = {"i8": 1, "i8x2": 2}.get(policy.prefill, policy.prefill_planes or 2)
    if adapter.cpu:
        if policy.prefill in ("auto", "sgmat", "sgmat-f16") and qtype in (GGMLType.Q4_1, GGMLType.Q6_K):
            return None  # Q6_K: not measured there; matmul_rows keeps it
        return MatmulI8Tiling(stage=False, wg=8, rm=4, rn=8, planes=planes)
    kb = 2 if K % 64 == 0 else 1
    if policy.i8_tiling is not None:
        return replace(policy.i8_tiling, stage=True, kb=policy.i8_tiling.kb if kb == 2 else 1, planes=planes)
    # 256 threads, each with the next K step's loads in registers (pf) while it computes this one. Two planes:
    # 4 tokens x 4 rows of a 64 x 64 tile at N >= 4096; under 4096 rows (1B's 2048) 8 tokens x 4 rows of a
    # 128 x 64 tile, one block a K step (the taller tile's two planes of x fill the 16 KiB of workgroup memory
    # with kb 2). The best of the tilings swept on the H200 at 512-token shapes: 1.05-1.11x and 1.11-1.13x
    # the tiles before (64 x 64 / 64 x 32 without pf; docs/benchmarks.md, "matmul_i8 with the next K step's
    # loads"). One plane (widths >= 1024) leaves room for the 128 x 64 tile with two blocks a step (15 KiB):
    # 1.04-1.10x the 64 x 64 tile at the 8B shapes, 1.06-1.09x the tiles before at 1B's (H100,
    # docs/benchmarks.md, "The peer table with one int8 plane in the prompt's matmuls").
    wide = MatmulI8Tiling(tm=128, tn=64, rm=8, rn=4, kb=kb, pf=True, planes=planes)
    if planes == 1 and adapter.fits(wide.shared_bytes()):
        return wide
    if N >= 4096:
        return MatmulI8Tiling(tm=64, tn=64, rm=4, rn=4, kb=kb, pf=True, planes=planes)
    return replace(wide, kb=1)


def sgmat_fits(adapter: Adapter, t: MatmulSgmatTiling | MatmulSgmatF16Tiling) -> bool:
    """A subgroup-matrix tile this adapter can run: its workgroup memory and its sg_m x sg_n subgroups of 32."""
    return adapter.fits(t.shared_bytes()) and t.threads <= adapter.invocations


def sgmat_tiling(
    adapter: Adapter, qtype: GGMLType, K: int, N: int = 0, policy: KernelPolicy = DEFAULT_POLICY
) -> MatmulSgmatTiling | None:
    """matmul_sgmat's tiling where the adapter has subgroup matrices (Dawn with allow_unsafe_apis; not
    default Chrome, not native wgpu, not lavapipe) and the policy asks for it ("sgmat"): Q4_0 and Q8_0 rows
    (None elsewhere: matmul_i8 is the fallback, on the same int8 x). Not by default: on the H200 it ran
    at 0.63-0.77x matmul_i8's speed and a 1B prefill at 0.41x (docs/benchmarks.md, "Tensor cores on Dawn")."""
    if policy.prefill != "sgmat" or qtype not in SGMAT_TYPES or K % 32 or not adapter.subgroup_matrix:
        return None
    t = policy.sgmat_tiling or MatmulSgmatTiling()
    if (K // 32) % t.kb:
        t = replace(t, kb=1)
    return t if sgmat_fits(adapter, t) else None


# matmul_sgmat_f16's tile by the waves a prefill chunk's workgroups make (docs/benchmarks.md, "f16 tiles by
# shape" and "The planner's f16 tiles measured again"): each candidate's time is its waves,
# ceil(workgroups / (per_sm * SMS)), at its full-wave speed; the planner takes the faster. Measured on the H100
# (132 SMs, Dawn, 2026-12-07, `sgmat_bench.py --kernels f16-big`): the 128x128 tile runs one workgroup an SM at
# ~140 TOPS (512x4096x4096: 128 workgroups, 140.0) and the 64x64 tile two at ~95 (95.6 there). The model picks
# the measured best at all seven 512-token shapes of Llama-3.2-1B and 3.1-8B (predicted / measured TOPS): 6144
# rows: 192 workgroups of 128x128 in two waves, the second 45% full (102 / 99.4), against 768 of 64x64 in 3
# (92 / 94.1); 2048 rows: 64 of 128x128 leave half the SMs idle (68 / 70.6) against 256 of 64x64 in one wave
# (92 / 91.9). (The speeds of before x16 and sgc, 94 and 78, took 64x64 at 6144 rows, 5% slower.) WebGPU does
# not tell the SM count: other GPUs get this choice too (both tiles work anywhere they fit).
SGMAT_F16_SMS = 132
# (tiling, workgroups an SM runs at once, TOPS at full waves); both with the next step's loads in flight, x
# staged by copies and the matrices loaded at constant offsets
SGMAT_F16_TILES = (
    (MatmulSgmatF16Tiling(sg_n=4, ti=4, pf=True, x16=True, sgc=True), 1, 140.0),  # 128x128: 2x4 subgroups of 4x2
    (MatmulSgmatF16Tiling(pf=True, x16=True, sgc=True), 2, 95.0),  # 64x64: 2x2 subgroups of 2x2 tiles
)


def _sgmat_f16_by_shape(adapter: Adapter, N: int) -> MatmulSgmatF16Tiling:
    def speed(tile: tuple[MatmulSgmatF16Tiling, int, float]) -> float:
        t, per_sm, tops = tile
        groups = math.prod(t.groups(max(N, 1), prefill_chunk(adapter)))
        wave = per_sm * SGMAT_F16_SMS
        return tops * groups / (_ceil_div(groups, wave) * wave)

    fits = [c for c in SGMAT_F16_TILES if sgmat_fits(adapter, c[0])]
    return max(fits, key=speed)[0] if fits else SGMAT_F16_TILES[-1][0]


def row_scale_wg(adapter: Adapter) -> int:
    """Threads of row_scale's workgroup (one workgroup a token row; matmul_sgmat_f16's x scales and f16 copy).
    The pass is memory-bound and each thread has one vec4 load in flight a loop step, so bytes in flight scale
    with threads: a 512-token prompt's 512 workgroups of 64 threads left ~250 threads an SM on the H100's 132,
    ~0.75 TB/s by Little's law; the 8B prompt's linears ran 0.6-2.6 GPU ms slower in the model than
    matmul_sgmat_f16 alone (w_down, whose x is 512 x 14336: 17.5 vs 14.9 ms; docs/benchmarks.md, "Measured on
    the H100: the prompt's key slices ..."), this pass's share of which is unmeasured (alone, the weights also
    stay in L2 over the reps). 256 on GPUs (4x the loads in flight, 512 x 256 threads still one
    wave); not yet measured against 64. CPU adapters: 64 (a workgroup barrier costs ~10x there, and the
    emulated subgroup-matrix tests run this pass)."""
    return 64 if adapter.cpu else 256


def sgmat_f16_tiling(
    adapter: Adapter, qtype: GGMLType, K: int, N: int = 0, policy: KernelPolicy = DEFAULT_POLICY
) -> MatmulSgmatF16Tiling | None:
    """matmul_sgmat_f16's tiling where the adapter has f16 subgroup matrices at 16x16x16 with shader-f16
    (Adapter.f16_subgroup_matrix) and the policy takes it ("auto" or "sgmat-f16"): Q4_0, Q4_1, Q8_0, Q4_K and
    Q6_K rows (of whole super-blocks for the K types), where the tile fits the adapter. By default where offered: on the
    H200 it ran at 2.3-2.7x matmul_i8's speed at 512-token shapes, 1.5-2.6x at 128-token chunks, and a 1B
    prefill at 1.31x (docs/benchmarks.md, "f16 weight tiles"). Safe for any f32 x: x is rounded to f16 only
    after division by a per-token power of two (row_scale.wgsl.j2: max |x / s_t| <= 2^14, multiplied back
    exactly), so |x| > 65504 no longer becomes inf (a random-weight Q4_K_M file's MLP reached it: NaN
    logits before); small values of a row with outliers lose relative precision below 2^-14 s_t. The tile:
    the policy's, else the faster of SGMAT_F16_TILES for N rows (_sgmat_f16_by_shape).
    Accuracy on real weights (builtins emulated on lavapipe; docs/benchmarks.md, "Real models through the GPU
    paths on lavapipe"): SmolLM2's prompt logits 5.6e-4 of max |logit| from transformers' (the f32 CPU path
    2.9e-4, matmul_i8 2.8e-4), Gemma-3-270M's 3.5e-4 (2.3e-4, 1.8e-4): within the real models' 2e-3."""
    if (
        policy.prefill not in ("auto", "sgmat-f16")
        or qtype not in SGMAT_F16_TYPES
        or K % (256 if qtype in (GGMLType.Q4_K, GGMLType.Q6_K) else 32)
        or not adapter.f16_subgroup_matrix
    ):
        return None
    t = policy.sgmat_f16_tiling or _sgmat_f16_by_shape(adapter, N)
    if policy.sgmat_f16_splits is not None:
        t = replace(t, splits=policy.sgmat_f16_splits)
    if (K // 32) % t.kb:
        t = replace(t, kb=1)
    # at most one slice a K step, and the partial tiles [splits, chunk, N] within a storage binding
    splits = min(t.splits, K // 32 // t.kb)
    while splits > 1 and 4 * splits * prefill_chunk(adapter) * N > SPLITK_PART_BYTES:
        splits -= 1
    t = replace(t, splits=max(splits, 1))
    return t if sgmat_fits(adapter, t) else None


def sgmat_group_tiling(
    adapter: Adapter, qtype: GGMLType, K: int, rows: list[int], policy: KernelPolicy = DEFAULT_POLICY, glu: bool = False
) -> MatmulSgmatF16Tiling | None:
    """The tile of a prompt's fused group as one matmul_sgmat_f16 dispatch over all its rows: gate and up (each [H,
    K] of qtype, rows [H, H]) with act(gate) * up in its epilogue (glu: the template's glu, where
    KernelPolicy.prefill_glu asks), or Q/K/V (two or three matrices of one type: the template's mats, where
    KernelPolicy.prefill_qkv asks), where sgmat_f16_tiling plans sum(rows) rows in one slice and one turn and,
    with glu, with a tile the epilogue can pair (tj even: a subgroup's first tj / 2 tiles gate's, its last up's,
    of the same rows); else None (a matmul a matrix, and the GLU's pass). Why: the workgroups of all the group's
    matmuls fill the GPU's waves together (8B's 512 x 14336 gate and up: 2 x 448 of 128x128, 3.4 waves of 132
    SMs each, against 896 in 6.8; its K and V: 32 workgroups each, a quarter of the SMs for a whole wave), and
    with glu no [T, H] outputs of gate and up are stored and read back."""
    if not (policy.prefill_glu if glu else policy.prefill_qkv):
        return None
    t = sgmat_f16_tiling(adapter, qtype, K, sum(rows), policy)
    if t is None or (glu and t.tj % 2) or t.splits > 1 or t.out_turns > 1:
        return None
    return t


def i8_group_tiling(
    adapter: Adapter, qtype: GGMLType, K: int, rows: list[int], policy: KernelPolicy = DEFAULT_POLICY, glu: bool = False
) -> MatmulI8Tiling | None:
    """As sgmat_group_tiling for matmul_i8 (the prompt's matmuls without subgroup matrices; the template's glu and
    mats alike): the staged tile i8_tiling plans for sum(rows) rows, with glu where a thread's rows pair up (rn
    even: its first rn / 2 rows are gate's, its last up's, of the same outputs); else None."""
    if not (policy.prefill_glu if glu else policy.prefill_qkv):
        return None
    t = i8_tiling(adapter, qtype, K, sum(rows), policy)
    return t if t is not None and t.stage and not (glu and t.rn % 2) else None


# the partial tiles' buffer of a split matmul_sgmat_f16 stays within WebGPU's default
# maxStorageBufferBindingSize (128 MiB), which every adapter offers
SPLITK_PART_BYTES = 128 << 20


@dataclass(frozen=True)
class MatmulRow:
    template: str
    tiling: Callable[
        [Adapter, GGMLType, int, int, KernelPolicy],
        MatmulSgmatF16Tiling | MatmulSgmatTiling | MatmulI8Tiling | MatmulTiling | MatmulRowsTiling | None,
    ]


MATMUL_TABLE: tuple[MatmulRow, ...] = (
    # tensor cores on f16 tiles: weights dequantized while staged, x / s_t rounded to f16 (where
    # sgmat_f16_tiling says it runs: where the adapter has the f16 config, unless the policy says otherwise)
    MatmulRow("matmul_sgmat_f16", sgmat_f16_tiling),
    # tensor cores: i8 subgroup matrix multiplies over the same int8 x (where sgmat_tiling says it runs:
    # asked for by the policy, for now)
    MatmulRow("matmul_sgmat", sgmat_tiling),
    # packed 8-bit dot products over x quantized once per dispatch pair (where i8_tiling says it runs)
    MatmulRow("matmul_i8", i8_tiling),
    # CPU adapters: barrier-free rows, by weight type; on SwiftShader with K read at run time
    MatmulRow(
        "matmul_rows",
        lambda a, q, K, N, p: cpu_matmul_tiling(q, a.swiftshader) if a.cpu else None,
    ),
    # GPUs: register tiles, by the number of rows
    MatmulRow("matmul", lambda a, q, K, N, p: gpu_matmul_tiling(N)),
)
_MATMUL_TEMPLATES = {
    MatmulSgmatF16Tiling: "matmul_sgmat_f16",
    MatmulSgmatTiling: "matmul_sgmat",
    MatmulI8Tiling: "matmul_i8",
    MatmulRowsTiling: "matmul_rows",
    MatmulTiling: "matmul",
}


def plan_matmul(
    adapter: Adapter,
    qtype: GGMLType,
    N: int,
    K: int,
    policy: KernelPolicy = DEFAULT_POLICY,
    request: MatmulSgmatF16Tiling | MatmulSgmatTiling | MatmulI8Tiling | MatmulTiling | MatmulRowsTiling | None = None,
) -> MatmulPlan:
    if request is not None:
        return MatmulPlan(_MATMUL_TEMPLATES[type(request)], request)
    for row in MATMUL_TABLE:
        tiling = row.tiling(adapter, qtype, K, N, policy)
        if tiling is not None:
            return MatmulPlan(row.template, tiling)
    raise AssertionError("the last row of MATMUL_TABLE always applies")


# -- attention ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class AttentionPlan:
    fused: bool  # single tokens: attention_step (RoPE + cache write + attention + merge, one dispatch)
    step: StepTiling
    # fused: attention_step merges its slices (device-scope barrier); else attention_combine after it
    step_merge: bool
    decode_wg: int  # otherwise: attention_decode's threads, split-K slices and full-chunk loop
    splits: int
    full_chunks: bool
    combine_wg: int  # attention_combine's threads (splits > 1)
    prefill: PrefillTiling  # attention_prefill's on GPUs


def default_step_tiling(n_kv_heads: int) -> StepTiling:
    """Slices of >= 32 positions, up to ~256 workgroups: a short chat runs as one slice per kv head
    (no merge), long contexts as up to 32 slices per kv head. On the H200 (Dawn and native, 1B and 8B
    layouts, 512-4096 positions) no other tiling of 21 was faster beyond the noise at 512 positions, and
    none at every length; fewer, longer slices lose ~3.5 us per serial 32-position chunk, one slice (no
    merge, one dispatch on Dawn) 4-15x (docs/benchmarks.md, "decode attention's microseconds")."""
    return StepTiling(splits=max(1, min(32, 256 // n_kv_heads)))


def prefill_tiles(
    adapter: Adapter, head_dim: int, group: int, policy: KernelPolicy = DEFAULT_POLICY, kv_dtype: str | None = None
) -> PrefillTiling:
    """attention_prefill's tiling on GPUs (the policy's where it gives one), within the adapter's limits
    (threads per workgroup; 2*tk*head_dim floats of workgroup memory).
    With subgroups: L lanes per query row (8 for head_dim >= 128, else 4, where they divide
    head_dim / 4 and fit the smallest subgroup), so a lane keeps head_dim / L dims of q and acc in
    registers (a whole head_dim 128 row per thread spills) and tq tokens x group heads x L lanes
    make ~128 threads: a 128-token chunk of an 8B model (group 4, L 8) is 32 x 8 kv heads = 256
    workgroups, not 64 of the one-thread-per-row form. Without subgroups that form: 16 tokens.
    First, where the policy asks for it and the adapter has f16 subgroup matrices (and the policy gives no
    lanes tiling): attention_prefill_sgmat (sgmat_prefill_tiling; kv_dtype: the KV cache's element, None:
    kv_cache_dtype's)."""
    t = policy.prefill_attention
    if t is None or t.sgmat:
        s = sgmat_prefill_tiling(adapter, head_dim, group, policy, kv_dtype)
        if s is not None:
            return s
    if policy.prefill_attention_kernel == "sgmat-f16" or (t is not None and t.sgmat):
        raise KernelPolicyError(
            "prefill_attention_kernel 'sgmat-f16' (attention_prefill_sgmat) needs a GPU adapter with f16 subgroup "
            f"matrices (here cpu={adapter.cpu}, f16_subgroup_matrix={adapter.f16_subgroup_matrix}), a KV cache of "
            f"f16 values (f16 or f16x2, here {kv_dtype or kv_cache_dtype(adapter, head_dim, policy)}: an f32 cache "
            f"is attended in f32), head_dim a multiple of 16 (here {head_dim}) and a tiling that fits the adapter "
            f"(tq * group a multiple of 16 and <= 2 tk, tk a multiple of 16; workgroup memory; splits >= 1, "
            f"and 1 with twopass; lazy 1..11 and only in one pass without slices)"
            f"{f': {t}' if t is not None else ''}"
        )
    d4 = head_dim // 4
    if t is None:
        lanes = 1
        if not adapter.cpu and head_dim % 4 == 0:
            # 8 lanes only where each keeps >= 4 vec4s (head_dim >= 128): fewer lanes, fewer shuffles
            for n in (8, 4) if head_dim >= 128 else (4,):
                if d4 % n == 0 and team_subgroups(adapter, n):
                    lanes = n
                    break
        tq = 16 if lanes == 1 else max(1, min(16, 128 // (group * lanes)))
        unroll = SWIFTSHADER_PREFILL_UNROLL if adapter.swiftshader and d4 % SWIFTSHADER_PREFILL_UNROLL == 0 else 0
        t = PrefillTiling(tq, 32, lanes, unroll=unroll)
    elif t.lanes > 1 and (head_dim % 4 or d4 % t.lanes):
        raise ValueError(f"attention_prefill's {t.lanes} lanes must divide head_dim / 4 = {head_dim / 4}")
    elif t.lanes > 1 and not adapter.subgroups:
        raise ValueError(f"attention_prefill's {t.lanes} lanes per row need the subgroups feature")
    elif t.tq * group % t.rows:
        raise ValueError(f"attention_prefill's {t.rows} rows per thread must divide tq * group = {t.tq * group}")
    tq, tk = t.tq, t.tk
    while tq > 1 and tq * group * t.lanes // t.rows > adapter.invocations and (tq // 2 * group) % t.rows == 0:
        tq //= 2
    while tk > 1 and not adapter.fits(2 * tk * head_dim * 4):
        tk //= 2
    if t.unroll and (head_dim % 4 or d4 % t.unroll):
        raise ValueError(f"attention_prefill's unroll {t.unroll} must divide head_dim / 4 = {head_dim / 4}")
    return PrefillTiling(tq, tk, t.lanes, t.rows, unroll=t.unroll)


def sgmat_prefill_tiling(
    adapter: Adapter, head_dim: int, group: int, policy: KernelPolicy = DEFAULT_POLICY, kv_dtype: str | None = None
) -> PrefillTiling | None:
    """attention_prefill_sgmat's tiling where it applies (else None): a GPU adapter with f16 subgroup
    matrices, head_dim a multiple of 16, the policy asking for it (see SGMAT_ATTENTION_HEAD_DIMS), a KV cache
    of f16 values (kv_dtype f16 or f16x2; None: kv_cache_dtype's). Not an f32 cache: the kernel rounds K and V
    to f16 (inf past 65504), and an f32 cache is there to be attended in f32 (KernelPolicy.kv_cache "f32":
    CPU adapters, comparisons with transformers to 1e-5). Up to 64 query rows a workgroup (4 subgroups;
    group 4: 16 tokens, group 3: 16 tokens in 3), tq * group a multiple of 16, and 32 keys a tile
    (Q is staged where the K/V tile goes: tq * group <= 2 tk), within the adapter's threads and workgroup
    memory (the policy's tq and tk where it gives an sgmat tiling). Measured in docs/benchmarks.md, "Prompt
    attention on f16 subgroup matrices"."""
    t = policy.prefill_attention
    kind = policy.prefill_attention_kernel
    if (
        kind == "lanes"
        or (kind == "auto" and head_dim not in SGMAT_ATTENTION_HEAD_DIMS and not (t is not None and t.sgmat))
        or adapter.cpu
        or not adapter.f16_subgroup_matrix
        or head_dim % 16
        or (t is not None and not t.sgmat)
        or (kv_dtype or kv_cache_dtype(adapter, head_dim, policy)) == "f32"
    ):
        return None
    if t is None:
        unit = 16 // math.gcd(group, 16)  # tokens whose rows fill whole subgroups
        t = PrefillTiling(max(unit, 64 // group // unit * unit), 32, sgmat=True, sgc=True)
    rows = t.tq * group
    ok = (
        rows % 16 == 0
        and t.splits >= 1
        and (t.splits == 1 or not t.twopass)
        and (not t.lazy or (1 <= t.lazy <= 11 and t.splits == 1 and not t.twopass))
        and t.tk % 16 == 0
        and rows <= 2 * t.tk
        and 2 * rows <= adapter.invocations
        and adapter.fits(t.sgmat_shared_bytes(head_dim, group))
    )
    return t if ok else None


def plan_attention(
    adapter: Adapter,
    n_heads: int,
    n_kv_heads: int,
    head_dim: int,
    policy: KernelPolicy = DEFAULT_POLICY,
    fused: bool | None = None,
    step_tiling: StepTiling | None = None,
    decode_wg: int | None = None,
    decode_splits: int | None = None,
    decode_full_chunks: bool | None = None,
    combine_wg: int | None = None,
    kv_dtype: str | None = None,
) -> AttentionPlan:
    """kv_dtype: the KV cache's element (None: kv_cache_dtype's). Arguments other than these, the adapter's
    and the policy's override a choice (tests)."""
    fused = policy.fused_attention if fused is None else fused
    merge = policy.step_merge
    if merge is None:
        # attention_step's merge of its slices relies on storageBarrier() being a device-scope fence
        # (Adapter.device_scope_barrier: native wgpu over Vulkan); WGSL promises only workgroup scope,
        # and a test passing on a CPU adapter (coherent memory) shows nothing of a GPU's caches.
        # Elsewhere the step writes its slices' partials and attention_combine merges them in a
        # second dispatch (the boundary orders memory): 2 dispatches, not 3 unfused.
        merge = adapter.device_scope_barrier
    if fused is None:
        # GPUs only (CPU adapters: workgroup barriers cost ~10x); head_dim % 8 == 0; up to 10 storage
        # bindings with the merge, 9 without (`out` is attention_combine's).
        fused = not adapter.cpu and head_dim % 8 == 0 and adapter.storage_buffers >= (10 if merge else 9)
    elif fused and head_dim % 8:
        raise ValueError(f"the fused decode step needs head_dim % 8 == 0, not {head_dim}")
    cpu = adapter.cpu
    # Split-K decode: enough workgroups (heads x splits) to keep a GPU's cores busy on long contexts;
    # a CPU adapter has few cores and gets one workgroup per head. GPUs: chunks of 32 positions and up
    # to 1024 / n_heads slices.
    if decode_splits is None:
        decode_splits = max(1, 16 // n_heads) if cpu else max(1, min(64, 1024 // n_heads))
    return AttentionPlan(
        fused=bool(fused),
        step_merge=bool(merge),
        step=step_tiling or policy.step_tiling or default_step_tiling(n_kv_heads),
        decode_wg=(64 if cpu else 32) if decode_wg is None else decode_wg,
        splits=decode_splits,
        full_chunks=not cpu if decode_full_chunks is None else decode_full_chunks,
        # GPUs: 32 dims per workgroup, so the merge spreads over n_heads * head_dim / 32 workgroups
        combine_wg=combine_wg or (min(64, head_dim) if cpu else 32),
        prefill=prefill_tiles(adapter, head_dim, n_heads // n_kv_heads, policy, kv_dtype),
    )


# -- the prompt's chunks ------------------------------------------------------------------------------
def prefill_chunk(adapter: Adapter) -> int:
    """Tokens per prefill step (Engine.load's default). GPUs: 512, one step for most prompts (llama.cpp's
    default batch): the H200's 1B prefill ran 2.1x (native) and ~1.8x (Dawn) faster than in 128-token
    chunks, whose projections make too few workgroups to fill the GPU (docs/benchmarks.md, "prefill
    chunk"). CPU adapters: 64 (a few cores are filled by less; smaller activation buffers)."""
    return 64 if adapter.cpu else 512


def prefill_waits(adapter: Adapter) -> bool:
    """Whether a prompt of several chunks waits for each chunk before queuing the next, so that a stop
    (engine.Interrupt) lands between chunks instead of after the whole prompt. CPU adapters: a chunk takes
    seconds there (64 tokens of SmolLM2 on SwiftShader at ~5 tok/s), and a wait costs one 4-byte readback.
    GPUs: no; a chunk takes milliseconds and the chunks queue back to back (a wait would idle the GPU)."""
    return adapter.cpu


# -- the KV cache's element ---------------------------------------------------------------------------
def kv_cache_dtype(adapter: Adapter, head_dim: int, policy: KernelPolicy = DEFAULT_POLICY) -> str:
    """The KV cache's element type (kv_cache.DTYPE_BYTES): f16 where shader-f16 is granted; without it,
    f16 pairs packed in u32s ("f16x2") on GPUs, half the bytes attention reads per token of an f32
    cache (Dawn on NVIDIA keeps shader-f16 off); f32 on CPU adapters, where the halved bytes bought no
    decode speed on lavapipe (docs/benchmarks.md, "KV cache element"). The policy's choice otherwise
    (bench --kv-cache, tests)."""
    if policy.kv_cache != "auto":
        return policy.kv_cache
    if adapter.f16:
        return "f16"
    if head_dim % 4 == 0 and not adapter.cpu:
        return "f16x2"
    return "f32"
