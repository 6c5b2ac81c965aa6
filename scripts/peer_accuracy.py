#!/usr/bin/env python3
"""How far the peer's logits sit from transformers, beside webllm_py's prefill with one and two int8 planes of x.

webllm_py's prompt matmuls without subgroup matrices (matmul_i8) round x to int8 per 32-block: one plane is
llama.cpp's own rule for its integer matmuls (q8_0 / q8_1 activations), two add the rounding residual
(planner.prefill_planes_auto picks by the model's width). This puts a number on "llama.cpp's rule": llama.cpp
(its CPU backend, through scripts/llamacpp_logits.cpp) and the engine (the GPU kernels on lavapipe told it is
a GPU: tests/model_checks.gpu_like_device; KernelPolicy.prefill_planes 1 and 2) each run the real models'
prompts, and each is compared with transformers (tests/reference.hf_model, f32, the same GGUF file) on the
same token ids: max |logits - transformers'| / max |transformers' logit| at the last position (the metric the
parity tests hold to 2e-3), for the parity prompt (tests/model_checks.REAL_MODELS) and ~200 tokens of prose
(quant_accuracy.PROSE); for llama.cpp also the worst over every prose position.

    .venv/bin/python scripts/peer_accuracy.py --llama-cpp DIR [--models smollm2,gemma3]

DIR: a llama.cpp source tree with a CPU build in DIR/build (libllama.a, ggml's static libraries; e.g. the
sources scripts/peer_bundle.sh packs: `cmake -B build -DBUILD_SHARED_LIBS=OFF ... && cmake --build build
--target llama-results`); the tool is compiled into DIR/build/llamacpp_logits when missing.
"""

from __future__ import annotations

import argparse
import asyncio
import glob
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from quant_accuracy import N_PROSE, PROSE  # noqa: E402
from tests.model_checks import REAL_MODELS, gpu_like_device  # noqa: E402
from tests.reference import hf_model  # noqa: E402


def build_tool(src: Path) -> Path:
    exe = src / "build" / "llamacpp_logits"
    if exe.exists():
        return exe
    libs = [
        *glob.glob(str(src / "build" / "src" / "libllama.a")),
        *glob.glob(str(src / "build" / "ggml" / "src" / "libggml.a")),
        *sorted(glob.glob(str(src / "build" / "ggml" / "src" / "libggml-cpu*.a"))),
        *glob.glob(str(src / "build" / "ggml" / "src" / "libggml-base.a")),
    ]
    if len(libs) < 4:
        raise SystemExit(f"no static llama.cpp CPU build under {src / 'build'} (found {libs})")
    cmd = ["g++", "-O2", "-std=c++17", f"-I{src / 'include'}", f"-I{src / 'ggml' / 'include'}"]
    cmd += [str(ROOT / "scripts" / "llamacpp_logits.cpp"), "-o", str(exe), *libs, "-fopenmp", "-lpthread", "-ldl"]
    subprocess.run(cmd, check=True)
    return exe


def llamacpp_logits(exe: Path, model: str, ids: list[int], n_vocab: int) -> np.ndarray:
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "logits.f32")
        r = subprocess.run([str(exe), model, out, ",".join(map(str, ids))], capture_output=True, text=True)
        if r.returncode:
            raise SystemExit(f"llamacpp_logits failed: {r.stderr.strip().splitlines()[-1:]}")
        return np.fromfile(out, np.float32).reshape(len(ids), -1)[:, :n_vocab]


def hf_logits(path: str, ids: list[int]) -> np.ndarray:
    import torch

    model, _ = hf_model(path)
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits[0].float().numpy()


def engine_last_logits(path: str, ids: list[int], planes: int) -> np.ndarray:
    from webllm_py.engine import Engine
    from webllm_py.planner import KernelPolicy

    async def run():
        engine = await Engine.load(path, device=gpu_like_device(), policy=KernelPolicy(prefill_planes=planes))
        try:
            return np.frombuffer(await engine.logits(ids), np.float32)[: engine.config.vocab_size].copy()
        finally:
            engine.unload()

    return asyncio.run(run())


def rel(a: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(a - ref).max() / np.abs(ref).max())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--llama-cpp", required=True, type=Path, help="llama.cpp source tree with a CPU build in build/")
    ap.add_argument("--models", default="smollm2,gemma3")
    args = ap.parse_args()
    exe = build_tool(args.llama_cpp.resolve())
    print(
        "| model | prompt | llama.cpp CPU (last) | llama.cpp, worst position | webllm_py 1 plane | webllm_py 2 planes |"
    )
    print("|---|---|---|---|---|---|")
    for key in args.models.split(","):
        rm = REAL_MODELS[key]
        _, tok = hf_model(rm.path)
        for label, ids in (("parity", tok(rm.prompt).input_ids), (f"prose {N_PROSE}", tok(PROSE).input_ids[:N_PROSE])):
            ref = hf_logits(rm.path, ids)
            peer = llamacpp_logits(exe, rm.path, ids, ref.shape[1])
            worst = max(rel(peer[i], ref[i]) for i in range(len(ids)))
            ours = [rel(engine_last_logits(rm.path, ids, p), ref[-1]) for p in (1, 2)]
            print(
                f"| {key} | {label} ({len(ids)} tokens) | {rel(peer[-1], ref[-1]):.1e} | {worst:.1e} | "
                f"{ours[0]:.1e} | {ours[1]:.1e} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
