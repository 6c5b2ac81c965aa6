"""`python -m webllm_py bench`: native decode/prefill benchmark, printing one JSON object.

Runs a real checkpoint (default: SmolLM2-135M) or a model of a published shape with random weights
in a real quant type (weights are random bytes with sane scales: the speed of a quantized matvec
does not depend on the values). Optionally runs Hugging Face transformers eager generation of the
same shape on the same machine (CUDA if present) and reports the ratio.

`--constraint json_object|schema` also measures structured output's cost (issue 9): the same decode
steps with and without a token mask, the constraint built as api.py builds one from response_format.
Random weights end a JSON output early or late at random, so a finished output starts a new one in
the same sequence: both runs take exactly the same number of decode steps at the same positions.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import gc
import json
import math
import re
import statistics
import sys
import time
from typing import Any

# Published shapes (config.json of the real models); weights random.
SHAPES = {
    # SmolLM2-135M-Instruct (the default model): its file is Q4_1 with Q8_0 embeddings.
    "smollm2-135m": dict(
        dim=576,
        n_layers=30,
        n_heads=9,
        n_kv_heads=3,
        head_dim=64,
        hidden_dim=1536,
        vocab_size=49152,
        tie_embeddings=True,
        rope_theta=100000.0,
        rope_scaling=None,
    ),
    "llama-3.2-1b": dict(
        dim=2048,
        n_layers=16,
        n_heads=32,
        n_kv_heads=8,
        head_dim=64,
        hidden_dim=8192,
        vocab_size=128256,
        tie_embeddings=True,
        rope_theta=500000.0,
        rope_scaling={
            "rope_type": "llama3",
            "factor": 32.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        },
    ),
    "llama-3.1-8b": dict(
        dim=4096,
        n_layers=32,
        n_heads=32,
        n_kv_heads=8,
        head_dim=128,
        hidden_dim=14336,
        vocab_size=128256,
        tie_embeddings=False,
        rope_theta=500000.0,
        rope_scaling={
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        },
    ),
}
ROOFLINE_GBPS = {"H100": 3350.0, "H200": 4800.0}
_SUBGROUP_CALL = re.compile(r"\bsubgroup[A-Z]\w*\(")  # a WGSL subgroup builtin called


def kernels_taken(device) -> dict:
    """What the planner saw of the adapter and the templates the run rendered (":subgroups": calling
    subgroup builtins), e.g. to check on a device which kernels Dawn took."""
    from .planner import Adapter

    a = Adapter.of(device)
    names = {
        k.label.split()[0] + (":subgroups" if _SUBGROUP_CALL.search(k.source) else "") for k in device.kernels_made
    }
    return {
        "adapter": {
            f: getattr(a, f) for f in ("cpu", "subgroups", "subgroup_min", "packed_dot", "device_scope_barrier")
        },
        "templates": sorted(names),
    }


# --constraint schema: one fixed schema with the kinds issue 9 names (nested object, enum, array,
# numbers, strings bounded and not), so runs compare across commits.
BENCH_SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 24},
        "age": {"type": "integer"},
        "unit": {"enum": ["celsius", "fahrenheit"]},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 12}, "maxItems": 4},
        "address": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "zip": {"type": "string", "maxLength": 10}},
            "required": ["city", "zip"],
        },
        "score": {"type": "number"},
        "ok": {"type": "boolean"},
    },
    "required": ["name", "age", "unit", "tags", "address", "score", "ok"],
}
DEFAULT_TOKENIZER = "build/tokenizers/smollm2"  # SmolLM2's real vocabulary (49152 = the smollm2-135m shape's)


def _count(least: int):
    """An argparse type: an integer >= least (a 0-token prompt reached wgpu, 0 decode tokens divided by 0)."""

    def parse(v: str) -> int:
        if not v.lstrip("-").isdigit() or int(v) < least:
            raise argparse.ArgumentTypeError(f"must be an integer >= {least}, got {v!r}")
        return int(v)

    return parse


def _int_list(v: str) -> str:
    """An argparse type for the tiling options: comma-separated integers (kernel_policy unpacks them)."""
    if not all(f.strip().lstrip("-").isdigit() for f in v.split(",")):
        raise argparse.ArgumentTypeError(f"must be comma-separated integers, got {v!r}")
    return v


def _fields(names: tuple[str, ...], least: int):
    """An argparse type for a tiling option: `least` to len(names) comma-separated integers, checked while the
    arguments are parsed, before any model loads (kernel_policy unpacks them). A wrong count was a TypeError or
    ValueError once the model had loaded, or (integers past the last field) silently ignored."""

    def parse(v: str) -> str:
        n = len(_int_list(v).split(","))
        if not least <= n <= len(names):
            count = f"{least} to {len(names)}" if least < len(names) else str(least)
            raise argparse.ArgumentTypeError(f"takes {count} integers ({','.join(names)}), got {n}")
        return v

    return parse


# --i8-tiling's fields in order: MatmulI8Tiling's integers, then PF (0/1)
_I8_INTS = ("tm", "tn", "rm", "rn", "kb")
# --sgmat-f16-tiling's fields in order: MatmulSgmatF16Tiling's integers, then its booleans (0/1)
_SGMAT_F16_INTS = ("sg_m", "sg_n", "ti", "tj", "kb")
_SGMAT_F16_FLAGS = ("db", "pf", "x16", "sgc")


def _staged_spec(v: str) -> str:
    """An argparse type for --staged-tiling: each tiling 3 to 5 comma-separated integers (planner.parse_staged_tilings
    unpacks them). It took any text, and a field that was not a number (a key without `=`) or a tiling of two
    numbers reached a bare ValueError / IndexError once the model had loaded."""
    for item in filter(None, v.split(";")):
        fields = item.split("=", 1)[-1].split(",")
        if not 3 <= len(fields) <= 5 or not all(f.strip().lstrip("-").isdigit() for f in fields):
            raise argparse.ArgumentTypeError(
                f"must be WG,LANES,ROWS[,PREFETCH[,PLANES]] (integers), then ;KEY=... of the same form: "
                f"{item!r} in {v!r} is not"
            )
    return v


def _upper_fields(cls) -> tuple[str, ...]:
    """A tiling dataclass's field names in order, as its flag's metavar spells them."""
    return tuple(f.name.upper() for f in dataclasses.fields(cls))


def add_arguments(p: argparse.ArgumentParser) -> None:
    from .planner import PREFILL_ATTENTION_KERNELS, PREFILL_KERNELS, PrefillTiling, StepTiling

    p.add_argument("--model", help="GGUF/HF checkpoint (default: SmolLM2-135M-Instruct) unless --shape is given")
    p.add_argument("--shape", choices=sorted(SHAPES), help="random weights in this published shape")
    p.add_argument(
        "--quant",
        default="Q4_0",
        choices=["Q4_0", "Q4_1", "Q4_K", "Q8_0", "Q6_K", "Q4_K_M"],
        help="Q4_K_M: llama.cpp's mix of that name (Q4_K; Q6_K for the head and for attn_v / "
        "ffn_down of some layers), what most published GGUF files use",
    )
    # The types random_checkpoint can fill with random blocks (it knows their scales' offsets): another name was
    # a bare KeyError from inside it.
    p.add_argument(
        "--embed-quant",
        choices=["Q4_0", "Q4_1", "Q4_K", "Q8_0", "Q6_K"],
        help="type of the token embedding (default: --quant)",
    )
    p.add_argument("--prompt-tokens", type=_count(1), default=512)
    p.add_argument("--decode-tokens", type=_count(1), default=256)
    p.add_argument(
        "--repeat",
        type=_count(1),
        default=1,
        metavar="N",
        help="time the prompt and the decode N times in the process and report the medians (each run's in "
        "*_runs): llama-bench's protocol (-r 5 after a warm-up); one prefill is ~30 ms on a big GPU, which a "
        "GPU still raising its clocks, or a slow start of the process, can double",
    )
    p.add_argument("--prefill-chunk", type=int, help="tokens per prefill step (default: the planner's)")
    p.add_argument("--hf-reference", action="store_true", help="also time transformers eager generation (same shape)")
    p.add_argument(
        "--gpu-reps", type=_count(0), default=20, help="steps in one submission for the GPU-only time (0: skip)"
    )
    p.add_argument(
        "--profile",
        action="store_true",
        help="GPU time per op kind of one decode step and of the prompt's last chunk (all layers)",
    )
    p.add_argument(
        "--profile-min-ms",
        type=float,
        default=PROFILE_MIN_MS,
        metavar="MS",
        help="--profile times each op kind over at least this much GPU work (more reps than --gpu-reps where "
        f"one rep is shorter), so that a short op does not carry a readback's jitter (default {PROFILE_MIN_MS:g})",
    )
    # Kernel choices other than the planner's (planner.KernelPolicy), for A/B runs
    p.add_argument(
        "--matvec-tiling",
        type=_fields(("WG", "ROWS"), 2),
        help="WG,ROWS: matvec_q4's and the generic matvec's tiling (KernelPolicy)",
    )
    p.add_argument(
        "--matvec-kernel",
        choices=["staged", "q4"],
        default="staged",
        help="q4: no staged matvec (matvec_q4 for 4-bit weights, the generic one for Q8_0/Q6_K)",
    )
    p.add_argument(
        "--staged-tiling",
        type=_staged_spec,
        metavar="SPEC",
        help="the staged matvec's tilings: WG,LANES,ROWS[,PREFETCH[,PLANES]] for all, then optional ;glu=... "
        ";qkv=... ;tall=... ;k<K>=... ;wide=... (planner.parse_staged_tilings)",
    )
    p.add_argument(
        "--staged-planes",
        type=int,
        choices=[1, 2],
        help="int8 planes of x in every staged matvec tiling (2: the rounding residual too, as matmul_i8's "
        "two planes; planner.StagedTiling.planes); default: 2 for models narrower than 1024, else the tilings' own "
        "(1; planner.staged_planes_auto); with --staged-tiling, the tilings' own",
    )
    p.add_argument(
        "--prestage",
        action=argparse.BooleanOptionalAction,
        help="the staged matvecs read x quantized once per token by its own dispatch, or by the epilogue of the "
        "residual add before (w_down, wo; where its tiling has 32 rows a workgroup) (planner.KernelPolicy.prestage); "
        "--no-prestage: each workgroup quantizes x itself; default: the model's choice (planner.prestage_auto)",
    )
    p.add_argument(
        "--attention-emit",
        action=argparse.BooleanOptionalAction,
        help="single-token attention also writes its output as wo's quantized x and wo reads it prestaged "
        "(planner.KernelPolicy.attention_emit); default: planner.attention_emit_auto",
    )
    p.add_argument(
        "--glu-emit",
        action=argparse.BooleanOptionalAction,
        help="the single-token fused gate/up (32 rows a workgroup) also writes its GLU output as w_down's quantized "
        "x and w_down reads it prestaged (planner.KernelPolicy.glu_emit); default: planner.glu_emit_auto",
    )
    p.add_argument(
        "--prefill-glu",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="the prompt's gate and up in one matmul_sgmat_f16 or matmul_i8 with the GLU in its epilogue "
        "(planner.sgmat_group_tiling, i8_group_tiling); --no-prefill-glu: two matmuls and the GLU's own pass "
        "(default: KernelPolicy.prefill_glu, on)",
    )
    p.add_argument(
        "--prefill-qkv",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="the prompt's Q/K/V in one matmul_sgmat_f16 or matmul_i8 (planner.sgmat_group_tiling, i8_group_tiling); "
        "--no-prefill-qkv: a matmul each (default: KernelPolicy.prefill_qkv, on)",
    )
    p.add_argument(
        "--prefill-kernel",
        choices=PREFILL_KERNELS,
        default="auto",
        help="prefill matmul: auto = matmul_sgmat_f16 where the adapter has f16 subgroup matrices, else "
        "matmul_i8 where it pays (two int8 planes of x below width 1024, one from it: prefill_planes_auto); sgmat = matmul_sgmat "
        "(tensor cores; Dawn with --unsafe-apis) where offered, else as auto; sgmat-f16 = matmul_sgmat_f16 "
        "(tensor cores on f16 tiles; Dawn on NVIDIA also needs --dawn-flag vulkan_enable_f16_on_nvidia) where "
        "offered, else as auto; i8x2 / i8 force matmul_i8; "
        "f32 = the dequantizing matmul (KernelPolicy.prefill)",
    )
    p.add_argument(
        "--i8-tiling",
        type=_fields(tuple(f.upper() for f in (*_I8_INTS, "pf")), 4),
        metavar="TM,TN,RM,RN[,KB[,PF]]",
        help="matmul_i8's workgroup tile on GPUs (PF 1: register prefetch)",
    )
    p.add_argument(
        "--sgmat-f16-tiling",
        type=_fields(tuple(f.upper() for f in _SGMAT_F16_INTS + _SGMAT_F16_FLAGS), len(_SGMAT_F16_INTS) + 1),
        metavar="SG_M,SG_N,TI,TJ,KB,DB[,PF[,X16[,SGC]]]",
        help="matmul_sgmat_f16's tile: subgroups along tokens and rows, 16x16 tiles each, 32-blocks a K step, "
        "double buffering 0/1, prefetch 0/1, x staged from row_scale's f16 copy 0/1, matrix loads at constant "
        "offsets 0/1 (planner.MatmulSgmatF16Tiling; the planner's tiles have PF, X16 and SGC on)",
    )
    p.add_argument(
        "--sgmat-f16-splits",
        type=int,
        metavar="S",
        help="matmul_sgmat_f16's split-K slices in every tile (1: never split); default: the planner's by shape",
    )
    p.add_argument(
        "--attention",
        choices=["fused", "combine", "unfused"],
        help="single-token attention as attention_step merging its slices (one dispatch), attention_step "
        "+ attention_combine, or kv_write + decode + combine (default: planner's)",
    )
    p.add_argument(
        "--kv-cache",
        choices=["auto", "f32", "f16", "f16x2"],
        default="auto",
        help="the KV cache's element: auto = the planner's (f16 with shader-f16, else f16x2 on GPUs); "
        "f16x2 = f16 pairs packed in u32s (KernelPolicy.kv_cache)",
    )
    p.add_argument(
        "--step-tiling",
        type=_fields(_upper_fields(StepTiling), 1),
        metavar="WG,CHUNK,SPLITS,MIN_SPLIT",
        help="attention_step's tiling",
    )
    p.add_argument(
        "--prefill-attention-tiling",
        type=_fields(_upper_fields(PrefillTiling), 2),
        metavar="TQ,TK[,L[,R[,SGMAT,UNROLL,SGC[,TWOPASS[,SPLITS[,LAZY]]]]]]",
        help="attention_prefill's on GPUs: tokens per workgroup, key positions per tile, lanes per query "
        "row (1: a thread per row; 4/8 need subgroups), rows per thread (with L > 1); 1 for SGMAT: "
        "attention_prefill_sgmat's tiling, 1 for SGC its products at constant offsets, 1 for TWOPASS its key walk "
        "twice, O held in result matrices, SPLITS its one-pass key walk in slices merged by attention_combine "
        "LAZY > 0 its O held in result matrices, rescaled when a row's max grows by more than LAZY "
        "(PrefillTiling's fields; "
        "KernelPolicy.prefill_attention)",
    )
    p.add_argument(
        "--prefill-attention-kernel",
        choices=PREFILL_ATTENTION_KERNELS,
        default="auto",
        help="prompt attention: sgmat-f16 = attention_prefill_sgmat (f16 subgroup matrices), lanes = "
        "attention_prefill's GPU forms, auto = the planner's (KernelPolicy.prefill_attention_kernel)",
    )
    p.add_argument(
        "--read-spin", choices=["0", "1"], help="readback: 0 = wgpu-py's blocking read, 1 = polled (default: GPUs)"
    )
    p.add_argument(
        "--shader-checks",
        choices=["0", "1"],
        help="native: 1 = kernels compiled with naga's run-time checks (clamped array indices, bounded "
        "loops), 0 = without (default: with on CPU adapters only; NativeDevice says why)",
    )
    p.add_argument(
        "--decode-loop",
        choices=["pipelined", "stepped"],
        default="pipelined",
        help="decode as generation does (pipelined: the next step runs while a token is read back), or each "
        "step after its token's readback (stepped: as under a structured-output constraint; A/B)",
    )
    p.add_argument(
        "--decode-depth",
        type=_count(2),
        default=None,
        metavar="N",
        help="pipelined decode's steps in flight, >= 2 (default: engine.DECODE_DEPTH; Engine.decode_depth)",
    )
    p.add_argument(
        "--subgroups",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="request the adapter's subgroups feature (kernels use it); default: as the engine does (on GPU adapters)",
    )
    p.add_argument(
        "--fold-norms",
        type=int,
        metavar="MAX_K",
        help="matvec_q4 folds RMSNorm into fused matvecs up to this K (KernelPolicy.fold_norm_max_k; default: "
        "planner.FOLD_NORM_MAX_K, 1024; 0: never)",
    )
    p.add_argument("--bandwidth-gbps", type=float, help="adapter memory bandwidth for the roofline (default: by name)")
    p.add_argument(
        "--constraint",
        choices=["json_object", "schema"],
        help="also time decode under response_format json_object / json_schema (BENCH_SCHEMA)",
    )
    p.add_argument("--tokenizer", help=f"tokenizer.json or its folder, for --shape (default: {DEFAULT_TOKENIZER})")
    p.add_argument("--temperature", type=float, default=0.0, help="sampling temperature of the timed decode (seed 0)")
    p.add_argument(
        "--token-ids", type=_count(0), default=0, metavar="N", help="also print the first N greedy token ids"
    )
    p.add_argument("--rounds", type=_count(1), default=3, help="--constraint: alternating free/constrained runs")


# Byte offsets of the f16 scale fields inside a block of each type random_blocks fills (d first for all but
# Q6_K, whose d is last).
RANDOM_SCALE_FIELDS = {
    "Q4_0": [0],
    "Q4_1": [0, 2],
    "Q5_0": [0],
    "Q5_1": [0, 2],
    "Q8_0": [0],
    "Q4_K": [0, 2],
    "Q6_K": [208],
}


def random_blocks(gtype, n: int, rng) -> bytes:
    """n weights of quantized type `gtype` as random blocks whose f16 scales are small (1e-3 to 3e-3), so
    sums of thousands of them stay finite: a benchmark's weights (speed does not depend on the values)."""
    import numpy as np

    from .formats.quants import layout_of

    if gtype.name not in RANDOM_SCALE_FIELDS:
        raise ValueError(f"random weights of type {gtype.name} are not supported ({', '.join(RANDOM_SCALE_FIELDS)})")
    lay = layout_of(gtype)
    nblocks = n // lay.block_size
    blocks = np.frombuffer(rng.bytes(nblocks * lay.type_size), np.uint8).reshape(nblocks, lay.type_size).copy()
    scales = (rng.random(nblocks, dtype=np.float32) * 2e-3 + 1e-3).astype(np.float16).view(np.uint8).reshape(nblocks, 2)
    for off in RANDOM_SCALE_FIELDS[gtype.name]:
        blocks[:, off : off + 2] = scales
    return blocks.tobytes()


def random_checkpoint(shape: str, quant: str, embed_quant: str | None = None):
    """A Checkpoint whose tensors are random bytes in `quant`, with f16 scales set to small values."""
    import numpy as np

    from .checkpoint import Checkpoint
    from .formats.quants import GGMLType, TensorInfo
    from .formats.source import BytesSource
    from .models.config import ModelConfig

    s = SHAPES[shape]
    cfg = ModelConfig(
        arch="llama",
        n_layers=s["n_layers"],
        dim=s["dim"],
        n_heads=s["n_heads"],
        n_kv_heads=s["n_kv_heads"],
        head_dim=s["head_dim"],
        hidden_dim=s["hidden_dim"],
        vocab_size=s["vocab_size"],
        context_length=131072,
        norm_eps=1e-5,
        rope_theta=s["rope_theta"],
        rope_pairs="halves",
        rot_dim=s["head_dim"],
        tie_embeddings=s["tie_embeddings"],
        rope_scaling=s["rope_scaling"],
    )
    mix = quant == "Q4_K_M"
    qtype = GGMLType.Q4_K if mix else GGMLType[quant]
    rng = np.random.default_rng(0)
    tensors = {}
    made: dict[tuple, bytes] = {}  # one random matrix per (shape, type): speed does not depend on values

    def add(name, rows, cols, gtype=qtype):
        if gtype == GGMLType.F32:
            data = (1.0 + 0.01 * rng.standard_normal(cols)).astype(np.float32).tobytes()
            tensors[name] = TensorInfo(name, (cols,), gtype, 0, len(data), True, BytesSource(data))
            return
        key = (rows, cols, gtype)
        if key not in made:
            made[key] = random_blocks(gtype, rows * cols, rng)
        data = made[key]
        tensors[name] = TensorInfo(name, (cols, rows), gtype, 0, len(data), True, BytesSource(data))

    def more_bits(i: int) -> bool:  # llama.cpp's use_more_bits: the first and last eighth, every third between
        n = cfg.n_layers
        return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2

    def mixed(i: int) -> GGMLType:
        return GGMLType.Q6_K if mix and more_bits(i) else qtype

    D, H, kv = cfg.dim, cfg.hidden_dim, cfg.n_kv_heads * cfg.head_dim
    head = GGMLType.Q6_K if mix else qtype  # Q4_K_M: the output matrix (the tied embedding too) in Q6_K
    embed = GGMLType[embed_quant] if embed_quant else (head if cfg.tie_embeddings else qtype)
    add("token_embd.weight", cfg.vocab_size, D, embed)
    add("output_norm.weight", 1, D, GGMLType.F32)
    if not cfg.tie_embeddings:
        add("output.weight", cfg.vocab_size, D, head)
    for i in range(cfg.n_layers):
        b = f"blk.{i}."
        add(b + "attn_norm.weight", 1, D, GGMLType.F32)
        add(b + "ffn_norm.weight", 1, D, GGMLType.F32)
        add(b + "attn_q.weight", cfg.n_heads * cfg.head_dim, D)
        add(b + "attn_k.weight", kv, D)
        add(b + "attn_v.weight", kv, D, mixed(i))
        add(b + "attn_output.weight", D, cfg.n_heads * cfg.head_dim)
        add(b + "ffn_gate.weight", H, D)
        add(b + "ffn_up.weight", H, D)
        add(b + "ffn_down.weight", D, H, mixed(i))
    return Checkpoint(cfg, tensors, None, "gguf", f"{shape} (random {quant})")


def kernel_policy(args: argparse.Namespace):
    """The KernelPolicy that bench's flags ask for (the planner's defaults where none is given)."""
    from .planner import (
        FOLD_NORM_MAX_K,
        KernelPolicy,
        MatmulI8Tiling,
        MatmulSgmatF16Tiling,
        MatvecTiling,
        StepTiling,
        parse_staged_tilings,
    )

    ints = lambda v: [int(f) for f in v.split(",")]  # noqa: E731
    tiling = {}
    if args.matvec_tiling:
        wg, rows = ints(args.matvec_tiling)
        tiling = dict(q4_tiling=MatvecTiling(wg, rows), gpu_tiling=MatvecTiling(wg, rows))
    return KernelPolicy(
        staged_matvec=args.matvec_kernel == "staged",
        staged_tilings=parse_staged_tilings(args.staged_tiling or ""),
        staged_planes=args.staged_planes,
        prestage=args.prestage,
        attention_emit=args.attention_emit,
        glu_emit=args.glu_emit,
        prefill_glu=KernelPolicy.prefill_glu if args.prefill_glu is None else args.prefill_glu,
        prefill_qkv=KernelPolicy.prefill_qkv if args.prefill_qkv is None else args.prefill_qkv,
        fold_norm_max_k=FOLD_NORM_MAX_K if args.fold_norms is None else args.fold_norms,
        prefill=args.prefill_kernel,
        i8_tiling=MatmulI8Tiling(
            **dict(zip(_I8_INTS, ints(args.i8_tiling))), pf=ints(args.i8_tiling)[len(_I8_INTS) :] == [1]
        )
        if args.i8_tiling
        else None,
        sgmat_f16_tiling=MatmulSgmatF16Tiling(
            **dict(zip(_SGMAT_F16_INTS, ints(args.sgmat_f16_tiling))),
            **{k: bool(v) for k, v in zip(_SGMAT_F16_FLAGS, ints(args.sgmat_f16_tiling)[len(_SGMAT_F16_INTS) :])},
        )
        if args.sgmat_f16_tiling
        else None,
        sgmat_f16_splits=args.sgmat_f16_splits,
        fused_attention=None if args.attention is None else args.attention != "unfused",
        step_merge=None if args.attention is None else args.attention == "fused",
        step_tiling=StepTiling(*ints(args.step_tiling)) if args.step_tiling else None,
        prefill_attention=_prefill_attention(ints(args.prefill_attention_tiling))
        if args.prefill_attention_tiling
        else None,
        prefill_attention_kernel=args.prefill_attention_kernel,
        kv_cache=args.kv_cache,
        **tiling,
    )


def _prefill_attention(fields: list[int]):
    """--prefill-attention-tiling's integers as PrefillTiling's fields, its flags as booleans."""
    from .planner import PrefillTiling

    t = PrefillTiling(*fields)
    return dataclasses.replace(t, sgmat=bool(t.sgmat), sgc=bool(t.sgc), twopass=bool(t.twopass))


def count_buffers(device) -> list[int]:
    """Wrap device.create_buffer so the sizes of every buffer made from now on are summed in the returned cell."""
    total = [0]
    make = device.create_buffer

    def create_buffer(size, label=""):
        buf = make(size, label)
        total[0] += buf.size
        return buf

    device.create_buffer = create_buffer
    return total


def step_quantiles(seconds: list[float]) -> dict:
    """p10 / p50 / p90 / max of step times in ms, and how many steps took over twice the median."""
    ms = sorted(1e3 * t for t in seconds)
    med = statistics.median(ms)
    p10, p90 = (ms[min(len(ms) - 1, int(q * len(ms)))] for q in (0.1, 0.9))
    return {
        "p10": round(p10, 3),
        "p50": round(med, 3),
        "p90": round(p90, 3),
        "max": round(ms[-1], 3),
        "over_2x_median": sum(t > 2 * med for t in ms),
    }


def _js_gc():
    """The Dawn host's count of V8's collections (scripts/dawn_host.mjs's webllmGC), where this runs there."""
    try:
        import js  # type: ignore  # only under Pyodide

        return getattr(js, "webllmGC", None)
    except ImportError:
        return None


class GCPauses:
    """Python's cyclic garbage collections between start() and stop(), by generation, and the time they took
    (gc.callbacks): a full collection walks every object the model and the tokenizer hold, a pause the decode
    loop's host side waits out (under Pyodide, in WebAssembly). Under the Dawn host also V8's collections
    (its webllmGC): dawn.node's wait for the GPU makes JS garbage."""

    def __init__(self) -> None:
        self.count = [0, 0, 0]
        self.seconds = [0.0, 0.0, 0.0]
        self._t0 = 0.0
        self._js: Any = _js_gc()
        self.js_count, self.js_ms, self.js_major, self.js_major_ms = 0, 0.0, 0, 0.0

    def _callback(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._t0 = time.perf_counter()
        else:
            g = info["generation"]
            self.count[g] += 1
            self.seconds[g] += time.perf_counter() - self._t0

    def start(self) -> None:
        gc.callbacks.append(self._callback)
        if self._js is not None:
            self.js_count -= self._js.count
            self.js_ms -= self._js.ms
            self.js_major -= self._js.major
            self.js_major_ms -= self._js.majorMs

    def stop(self) -> None:
        gc.callbacks.remove(self._callback)
        if self._js is not None:
            self.js_count += self._js.count
            self.js_ms += self._js.ms
            self.js_major += self._js.major
            self.js_major_ms += self._js.majorMs

    def summary(self) -> dict:
        out = {
            "collections": self.count,
            "ms": [round(1e3 * t, 3) for t in self.seconds],
            "tracked": len(gc.get_objects()),
        }
        if self._js is not None:
            out["js_collections"], out["js_ms"] = self.js_count, round(self.js_ms, 3)
            out["js_mark_compacts"], out["js_mark_compact_ms"] = self.js_major, round(self.js_major_ms, 3)
        return out


async def gpu_ms_per_token(engine, tid: int, reps: int) -> float:
    """GPU time of one decode step without the host in the loop: `reps` forward+sample steps recorded
    into one command buffer (same position, so the same work as one token), then its submit and
    completion timed (the recording is not)."""
    d, s = engine.device, engine.model.state
    engine._stage_step(0, [tid])  # the next decode step's inputs (not appended: it is run reps times)
    await d.read_buffer(s.logits, 0, 4)
    rec = d.recorder()  # recorded first: the host's recording is not part of the GPU time
    for _ in range(reps):
        engine.model.record(rec, 1, logits=True)
        engine.sample_op.record(rec)
    t = time.perf_counter()
    rec.submit()
    await d.read_buffer(s.logits, 0, 4)
    return 1e3 * (time.perf_counter() - t) / reps


# What --profile times each op kind over at least: its time is the host's clock around one submission and a
# readback, whose jitter (~1-2 ms on Dawn) was as large as a ~1 ms op's 3 reps (docs/benchmarks.md: RoPE at 8B
# read 0.64 and 1.48 ms in two runs of the same kernel)
PROFILE_MIN_MS = 50.0


async def profile_ops(engine, reps: int, n: int = 1, min_ms: float = 0.0) -> dict:
    """GPU ms per step of `n` tokens spent in each op kind: that op of every layer recorded `reps`
    times into one submission, one readback at the end, with the inputs staged last (a decode step's,
    or a prefill chunk's of n tokens: then the head runs on its last row, as in generation). Where that
    submission took less than min_ms, it is timed again with the reps that make about min_ms (at most 100x)."""
    d, m = engine.device, engine.model
    # Ops a fused MatvecGroup records in one dispatch are timed as that group, not again alone.
    layer0 = m.layers[0]
    fused = set()
    for op in vars(layer0).values():
        if hasattr(op, "members"):
            if op.fused is None:  # not fused here: its members are timed one by one
                fused.add(id(op))
            else:
                fused.update(id(b) for b in op.members)
                fused.update(id(g[1]) for g in [op.glu] if g)
    groups = {
        name: [getattr(layer, name) for layer in m.layers]
        for name, op in vars(layer0).items()
        if hasattr(op, "record") and id(op) not in fused
    }
    groups["embed"] = [m.embed]
    # a single-token step's head reads the x its last residual add quantized, the final norm folded in
    head = m.lm_head_emitted if n == 1 and m.lm_head_emitted is not None else None
    if head is None:
        groups["final_norm"] = [m.final_norm]
    groups["lm_head"] = [head or m.lm_head]
    groups["sampling"] = [engine.sample_op]

    async def timed(ops: list, tokens: int, k: int) -> float:
        await d.read_buffer(m.state.logits, 0, 4)
        rec = d.recorder()
        for _ in range(k):
            for op in ops:
                op.record(rec, tokens)
        t = time.perf_counter()
        rec.submit()
        await d.read_buffer(m.state.logits, 0, 4)
        return 1e3 * (time.perf_counter() - t)

    out = {}
    for name, ops in groups.items():
        tokens = 1 if name in ("lm_head", "sampling") else n
        k = reps
        ms = await timed(ops, tokens, k)
        if ms < min_ms:
            k = min(100 * reps, max(reps + 1, math.ceil(reps * min_ms / max(ms, 1e-3))))
            ms = await timed(ops, tokens, k)
        out[name] = round(ms / k, 3)
    return out


def weight_bytes_per_token(ckpt) -> int:
    """Bytes of weights one decode step reads: every matrix, but only one row of the embedding."""
    total = 0
    for name, t in ckpt.tensors.items():
        if name == "token_embd.weight":
            total += t.nbytes // t.hf_shape[0]
            if ckpt.config.tie_embeddings:
                total += t.nbytes  # the tied LM head reads it whole
        else:
            total += t.nbytes
    return total


async def _bench(args) -> dict:
    from .checkpoint import open_checkpoint
    from .default_model import default_model_path
    from .gpu import request_device
    from .engine import Engine
    from .kv_cache import DTYPE_BYTES
    from .planner import DEFAULT_POLICY
    from .sampling import SamplingParams

    # --shape's options, refused where they would be dropped without a word: bench runs a file's own weights
    # and tokenizer (with --model and --shape both, it ran the random weights and never opened the file).
    from .errors import RequestError

    if args.shape and args.model:
        raise RequestError("--model and --shape each say what to run: give one of them")
    for given, option in ((args.embed_quant, "--embed-quant"), (args.tokenizer, "--tokenizer")):
        if given and not args.shape:
            raise RequestError(f"{option} is for --shape's random weights: a model file runs its own")

    t_load = time.perf_counter()
    ckpt = (
        random_checkpoint(args.shape, args.quant, args.embed_quant)
        if args.shape
        else open_checkpoint(default_model_path() if args.model is None else args.model)  # "": refused there
    )
    if args.shape and (args.constraint or args.tokenizer):  # masks need a real vocabulary
        ckpt.tokenizer = load_tokenizer(args.tokenizer or DEFAULT_TOKENIZER)
    # Positions the run uses: the prompt, the decode steps, and the one step --gpu-reps / --profile time after
    # them. Past the model's context the KV cache refused it, saying to load with a larger context window,
    # which bench has no option for.
    need = args.prompt_tokens + args.decode_tokens + (1 if args.gpu_reps or args.profile else 0)
    if need > ckpt.config.context_length:
        raise RequestError(
            f"--prompt-tokens {args.prompt_tokens} and --decode-tokens {args.decode_tokens} need {need} positions, "
            f"more than this model's context of {ckpt.config.context_length}: ask for fewer tokens"
        )
    backend = getattr(args, "backend", "native")  # "browser": the Dawn host (webllm_py/dawn.py) runs this
    native_only = {}
    if args.read_spin is not None:
        native_only["spin_reads"] = args.read_spin == "1"
    if args.shader_checks is not None:
        native_only["shader_checks"] = args.shader_checks == "1"
    if native_only and backend != "native":
        raise RequestError("--read-spin and --shader-checks are options of the native backend (bench), not dawn-bench")
    device = await request_device(backend, use_subgroups=args.subgroups, **native_only)
    allocated = count_buffers(device)
    ctx = args.prompt_tokens + args.decode_tokens + 16
    engine = await Engine.load(
        ckpt,
        device=device,
        context_window=ctx,
        prefill_chunk=args.prefill_chunk,
        max_sequences=1,
        policy=kernel_policy(args),
    )
    await device.read_buffer(engine.model.state.logits, 0, 4)  # uploads finished
    load_s = time.perf_counter() - t_load
    cfg = ckpt.config
    vocab = cfg.vocab_size
    prompt = [(i * 7919 + 13) % vocab for i in range(args.prompt_tokens)]

    params = SamplingParams(temperature=args.temperature, seed=0)
    engine.sampler.set_params(params)
    engine.sampler.reset(prompt)
    # Warm-up: compile every pipeline, touch every buffer.
    engine._cached[0] = []
    await engine._step(0, prompt[: engine.prefill_chunk], sample=True)
    await engine._step(0, [1], sample=True)
    if args.decode_depth is not None:
        engine.decode_depth = args.decode_depth
    async for _ in engine._decode_pipelined(0, 1, engine.decode_depth):  # and every readback slot of the pipelined path
        pass

    gc_pauses = GCPauses()
    step_s: list[float] = []  # every timed decode step's wall time, token to token (all runs)
    prefill_runs: list[float] = []
    decode_runs: list[float] = []
    issue_runs: list[float] = []
    for rep in range(args.repeat):
        engine.reset(0)  # after the warm-up, and after each run
        engine._cached[0] = []
        t0 = time.perf_counter()
        res = await engine._prefill(0, prompt)  # as generation runs it: one readback, after the last chunk
        prefill_runs.append(time.perf_counter() - t0)
        # the last chunk's host time to record and submit: on a GPU, time before its work starts (on a CPU adapter
        # a submit may run the work itself: wgpu-native on lavapipe does)
        prefill_issue_s = engine.last_issue_seconds

        # Decode as generation runs it (Engine._decode_steps: pipelined unless --decode-loop stepped); the host's
        # time to issue each step is timed apart from the whole step (submit + GPU + readback).
        issue_s = 0.0
        gc_pauses.start()
        try:
            t1 = t_prev = time.perf_counter()
            tid = res.token_id
            ids = [tid]  # greedy ids (prefill's, then each step's): compared across backends
            async for res in engine._decode_steps(0, tid, args.decode_tokens, args.decode_loop == "pipelined"):
                issue_s += engine.last_issue_seconds
                tid = res.token_id
                ids.append(tid)
                t = time.perf_counter()
                step_s.append(t - t_prev)
                t_prev = t
            decode_runs.append(t_prev - t1)
        finally:
            gc_pauses.stop()
        issue_runs.append(issue_s)
        if rep == 0:
            token_ids = ids
        elif ids != token_ids and args.temperature == 0:
            # the same prompt on the same state must decode the same: a difference is a defect, not noise
            raise RuntimeError(f"run {rep + 1} of --repeat decoded other greedy ids than the first")
    prefill_s = statistics.median(prefill_runs)
    decode_s = statistics.median(decode_runs)
    issue_s = statistics.median(issue_runs)
    decode_tps = args.decode_tokens / decode_s
    gpu_ms = await gpu_ms_per_token(engine, tid, args.gpu_reps) if args.gpu_reps else None

    min_ms = args.profile_min_ms
    profile = await profile_ops(engine, args.gpu_reps or 10, 1, min_ms) if args.profile else None
    if args.profile:  # the prompt's last chunk again, over the positions before it
        n = min(engine.prefill_chunk, len(prompt))
        engine.reset(0)
        engine._cached[0] = prompt[:-n]
        engine._stage_step(0, prompt[-n:])
        prefill_profile = await profile_ops(engine, args.gpu_reps or 10, n, min_ms)

    bytes_tok = weight_bytes_per_token(ckpt)
    kv_bytes = (
        2
        * cfg.n_kv_heads
        * cfg.head_dim
        * DTYPE_BYTES[engine.cache.dtype]
        # positions a decode step reads, on average over the run: a windowed layer no more than its window
        * sum(min(w or ctx, args.prompt_tokens + args.decode_tokens // 2) for w in cfg.layer_windows())
    )
    desc = device.info.description
    bw = args.bandwidth_gbps or next((v for k, v in ROOFLINE_GBPS.items() if k in desc), None)
    out = {
        "model": ckpt.name,
        "shape": {
            k: getattr(cfg, k)
            for k in ("n_layers", "dim", "n_heads", "n_kv_heads", "head_dim", "hidden_dim", "vocab_size")
        },
        "quant": args.quant if args.shape else "file",
        "backend": backend,
        "adapter": desc.strip(),
        "features": sorted(device.features),
        "load_s": round(load_s, 2),
        "gpu_buffers_gib": round(allocated[0] / 2**30, 3),
        "prompt_tokens": args.prompt_tokens,
        "prefill_chunk": engine.prefill_chunk,
        "prefill_tok_s": round(args.prompt_tokens / prefill_s, 1),
        "prefill_issue_ms_last_chunk": round(1e3 * prefill_issue_s, 3),
        "decode_tokens": args.decode_tokens,
        "decode_loop": args.decode_loop,
        "decode_depth": engine.decode_depth,
        "decode_tok_s": round(decode_tps, 1),
        **(
            {
                "repeat": args.repeat,
                "prefill_tok_s_runs": [round(args.prompt_tokens / t, 1) for t in prefill_runs],
                "decode_tok_s_runs": [round(args.decode_tokens / t, 1) for t in decode_runs],
            }
            if args.repeat > 1
            else {}
        ),
        "host_issue_ms_per_token": round(1e3 * issue_s / args.decode_tokens, 3),
        # token-to-token times of the timed decode steps (all runs): a slow run of steady steps, or a few stalls
        "decode_step_ms": step_quantiles(step_s),
        # Python's cyclic collections during the timed decodes (all runs): count by generation, their time
        "decode_gc": gc_pauses.summary(),
        "dispatches_per_token": len(engine._decode_program().commands),  # the captured decode step's
        "step_ms_per_token": round(1e3 * decode_s / args.decode_tokens, 3),
        "weight_bytes_per_token": bytes_tok,
        "kv_cache": engine.cache.dtype,
        "kv_bytes_per_token_avg": kv_bytes,
        "achieved_gbps": round((bytes_tok + kv_bytes) * decode_tps / 1e9, 1),
    }
    if gpu_ms:
        out["gpu_ms_per_token"] = round(gpu_ms, 3)
        out["gpu_bound_tok_s"] = round(1e3 / gpu_ms, 1)
        out["gpu_bound_gbps"] = round((bytes_tok + kv_bytes) / gpu_ms / 1e6, 1)
    if bw:
        out["roofline_gbps"] = bw
        out["roofline_fraction"] = round((bytes_tok + kv_bytes) * decode_tps / 1e9 / bw, 3)
        if gpu_ms:
            out["gpu_bound_roofline_fraction"] = round(out["gpu_bound_gbps"] / bw, 3)
    if profile:
        out["gpu_ms_by_op"] = profile
        out[f"gpu_ms_by_op_prefill_{n}"] = prefill_profile
    if args.token_ids:
        out["token_ids"] = token_ids[: args.token_ids]
    if args.matvec_tiling:
        out["matvec_tiling"] = args.matvec_tiling
    policy = engine.model.policy
    changed = {
        f.name: repr(getattr(policy, f.name))
        for f in dataclasses.fields(policy)
        if getattr(policy, f.name) != getattr(DEFAULT_POLICY, f.name)
    }
    if changed:  # the kernel choices this run made other than the planner's defaults
        out["kernel_policy"] = changed
    if args.temperature:
        out["temperature"] = args.temperature
    if args.constraint:
        out["structured"] = await structured_bench(engine, args, prompt, params)
    out["kernels"] = kernels_taken(device)
    engine.unload()
    return out


def load_tokenizer(path: str):
    """A Hugging Face tokenizer.json (with tokenizer_config.json beside it, for the EOS ids), or its folder."""
    from pathlib import Path

    from .tokenizer import Tokenizer

    p = Path(path)
    folder = p if p.is_dir() else p.parent
    cfg = folder / "tokenizer_config.json"
    return Tokenizer.from_hf(folder / "tokenizer.json" if p.is_dir() else p, cfg if cfg.exists() else None)


def response_format_for(kind: str) -> dict:
    if kind == "json_object":
        return {"type": "json_object"}
    return {"type": "json_schema", "json_schema": {"name": "bench", "schema": BENCH_SCHEMA, "strict": True}}


def _mask_cached(con) -> bool:
    """Whether con.mask() will return a mask computed before (cached on the matcher state)."""
    if con._strip_first:
        return con.matcher.first_masks.get(con.state.id) is not None
    return con.state.mask is not None


async def decode_run(engine, prompt: list[int], n: int, params, new_constraint=None) -> dict:
    """Prefill `prompt` from an empty cache, then time `n` decode steps. With `new_constraint` (a
    factory), each step is preceded by what Engine._generate_locked does (advance the matcher by the
    last token, compute its mask, write it to the sampler); a finished output (EOS, or the grammar
    admits nothing more) starts a new one in place, so the step count never depends on the output."""
    perf = time.perf_counter
    engine.reset(0)
    engine._cached[0] = []
    engine.sampler.set_params(params)
    engine.sampler.reset(prompt)
    con = new_constraint() if new_constraint else None
    engine.sampler.set_mask(con.mask() if con is not None else None)
    res = await engine._prefill(0, prompt)
    eos = set(engine.tokenizer.eos_ids) if con is not None else set()
    first_ms, cached_ms, outputs = [], [], []
    tid = res.token_id
    state = {"con": con, "advance_s": 0.0}

    def host_work():  # what Engine._generate_locked does between two steps of a constrained output
        con, t = state["con"], perf()
        done = tid in eos
        if not done:
            con.advance(tid)
            done = con.complete
        if done:
            outputs.append(bytes(con.text))
            con = state["con"] = new_constraint()
        t1 = perf()
        cached = _mask_cached(con)
        m = con.mask()
        state["advance_s"] += t1 - t
        (cached_ms if cached else first_ms).append(1e3 * (perf() - t1))
        engine.sampler.set_mask(m)

    work = host_work if con is not None else None
    t0 = perf()
    for _ in range(n):
        if work is not None:  # as the engine: the mask's work first, then the whole step
            work()
        res = await engine._step(0, [tid], sample=True)
        tid = res.token_id
    wall = perf() - t0
    con, advance_s = state["con"], state["advance_s"]
    engine.sampler.set_mask(None)
    out = {"tok_s": round(n / wall, 1), "ms_per_token": round(1e3 * wall / n, 3)}
    if con is not None:
        valid = 0
        for o in outputs:
            try:
                json.loads(o)
                valid += 1
            except ValueError:
                pass
        masks_ms = sum(first_ms) + sum(cached_ms)
        out.update(
            {
                "mask_ms_per_token": round(masks_ms / n, 3),
                "advance_ms_per_token": round(1e3 * advance_s / n, 3),
                "first_visits": len(first_ms),
                "first_visit_ms_mean": round(sum(first_ms) / len(first_ms), 2) if first_ms else None,
                "first_visit_ms_max": round(max(first_ms), 2) if first_ms else None,
                "cached_visits": len(cached_ms),
                "cached_ms_mean": round(sum(cached_ms) / len(cached_ms), 4) if cached_ms else None,
                "outputs_finished": len(outputs),
                "outputs_valid_json": valid,
                "output_sample": (outputs[0] if outputs else bytes(con.text))[:160].decode("utf-8", "replace"),
                "partial_output_bytes": len(con.text),
            }
        )
    return out


async def structured_bench(engine, args, prompt: list[int], params) -> dict:
    """Alternating free / constrained runs of the same decode steps (round 0's constrained run meets
    every matcher state for the first time; later rounds reuse the masks cached on the states, as a
    repeated schema does: with temperature 0 they are the same output again, all masks cached).
    Ratios compare the constrained runs with the median free run."""
    import statistics

    from .structured import Constraint, response_format_gbnf

    # As api.py: response_format -> GBNF -> Constraint(tokenizer, gbnf, the model's vocab size).
    gbnf = response_format_gbnf(response_format_for(args.constraint))
    tok, vocab = engine.tokenizer, engine.config.vocab_size
    t = time.perf_counter()
    Constraint(tok, gbnf, vocab)  # first use: the tokenizer's trie and the grammar's matcher
    setup_s = time.perf_counter() - t
    free, con = [], []
    for r in range(max(args.rounds, 1)):
        # A new seed each round (same for its free and constrained run): with temperature > 0 a later
        # round is a new output under the same schema, so it meets cached and new states both.
        p = dataclasses.replace(params, seed=r)
        free.append(await decode_run(engine, prompt, args.decode_tokens, p))
        con.append(await decode_run(engine, prompt, args.decode_tokens, p, lambda: Constraint(tok, gbnf, vocab)))
    free_tps = statistics.median(r["tok_s"] for r in free)
    warm = con[1:] or con
    warm_tps = statistics.median(r["tok_s"] for r in warm)
    return {
        "constraint": args.constraint,
        "tokenizer": args.tokenizer or (DEFAULT_TOKENIZER if args.shape else "file"),
        "tokenizer_vocab": tok.vocab_size,
        "decode_steps": args.decode_tokens,
        "trie_and_grammar_s": round(setup_s, 3),
        "free_tok_s": free_tps,
        "constrained_first_tok_s": con[0]["tok_s"],
        "constrained_warm_tok_s": warm_tps,
        "ratio_first": round(con[0]["tok_s"] / free_tps, 3),
        "ratio_warm": round(warm_tps / free_tps, 3),
        "slowdown_first_pct": round(100 * (1 - con[0]["tok_s"] / free_tps), 1),
        "slowdown_warm_pct": round(100 * (1 - warm_tps / free_tps), 1),
        "free_runs": free,
        "constrained_runs": con,
    }


def hf_reference(args) -> dict:
    """transformers eager greedy generation of the same shape (random weights, fp16 on CUDA if present)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    s = SHAPES[args.shape]
    cfg = LlamaConfig(
        hidden_size=s["dim"],
        num_hidden_layers=s["n_layers"],
        num_attention_heads=s["n_heads"],
        num_key_value_heads=s["n_kv_heads"],
        head_dim=s["head_dim"],
        intermediate_size=s["hidden_dim"],
        vocab_size=s["vocab_size"],
        tie_word_embeddings=s["tie_embeddings"],
        rope_theta=s["rope_theta"],
        rope_scaling=s["rope_scaling"],
        max_position_embeddings=131072,
    )
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.float16 if dev == "cuda" else torch.float32
    with torch.device(dev):
        model = LlamaForCausalLM(cfg).to(dtype).eval()
    ids = torch.tensor([[(i * 7919 + 13) % s["vocab_size"] for i in range(args.prompt_tokens)]], device=dev)

    def run(n):
        if dev == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0)
        if dev == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t

    run(4)
    t_short, t_long = run(1), run(args.decode_tokens + 1)
    return {
        "hf_device": dev,
        "hf_dtype": str(dtype),
        "hf_prefill_tok_s": round(args.prompt_tokens / t_short, 1),
        "hf_decode_tok_s": round(args.decode_tokens / (t_long - t_short), 1),
    }


def main(args: argparse.Namespace) -> int:
    if args.hf_reference and not args.shape:  # before the benchmark, not after it
        print("error: --hf-reference needs --shape (see webllm-py bench --help)", file=sys.stderr)
        return 2
    out = asyncio.run(_bench(args))
    if args.hf_reference:
        try:
            out.update(hf_reference(args))
            out["decode_speedup_vs_hf"] = round(out["decode_tok_s"] / out["hf_decode_tok_s"], 2)
            out["prefill_speedup_vs_hf"] = round(out["prefill_tok_s"] / out["hf_prefill_tok_s"], 2)
        except Exception as e:  # keep our own numbers when the reference cannot run
            out["hf_error"] = f"{type(e).__name__}: {e}"
    print(json.dumps(out))
    return 0
