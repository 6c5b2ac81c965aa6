"""The GPU adapters' kernels in a whole model, on lavapipe. CI has no GPU, and on its CPU adapter the
engine picks the row kernels (`is_fallback`); here a second lavapipe device is told it is a GPU, so the
engine records what it records on an H100: the tiled prefill matmul and attention, the staged int8
matvec (matvec_q4s) with RMSNorm folded into fused Q/K/V and gate/up dispatches, attention_step (RoPE,
cache write, attention and slice merge in one dispatch) and the tree sampler.

The model is a tiny random Llama written as a GGUF the way llama.cpp lays it out (Q/K rows permuted,
Q4_0 / Q4_1 / Q8_0 tensors, rows of 256 and 768 so every matrix takes the staged kernel); the reference
is transformers on the same weights as the GGUF stores them (dequantized by gguf-py).

Tolerance: the staged kernel rounds x to int8 blocks of 32 (llama.cpp's q8_1 rule), which moves each
matvec's outputs by ~0.5-0.8% of their scale. Every logits vector passes through one (the LM head runs
on the last row alone, prefill included: measured 6.1e-3 to 6.6e-3 of max |logit| after 5 and 20 tokens,
against 3.7e-4 with the CPU adapter's f32 kernels on the same file), so logits are compared at 1.5e-2
of max |logit| and greedy tokens where transformers' top-2 gap clears twice that.
"""

import asyncio
import json
import os

import numpy as np
import pytest

from webllm_py.engine import Engine
from webllm_py.sampling import SamplingParams

from .hf_models import Variant, build
from .model_checks import LONG, PREFILL_CHUNK, SHORT, assert_logits_match, gpu_like_device, same_greedy_policy_on_off
from .reference import prompt_ids
from .gguf_models import KINDS, finish_gguf, write_llama_gguf

pytestmark = [pytest.mark.gpu]

RTOL = 1.5e-2
N_GREEDY = 12
VARIANT = Variant(
    "llama-256",
    "llama",
    "float32",
    seed=3,
    init_std=0.05,
    config=dict(
        hidden_size=256,
        intermediate_size=768,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=64,
        max_position_embeddings=256,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        rope_theta=10000.0,
    ),
)


def llama_to_gguf(hf_dir: str, out_dir: str) -> tuple[str, str]:
    """(GGUF path, Hugging Face reference dir with the weights as the GGUF stores them)."""
    from safetensors.numpy import load_file

    with open(os.path.join(hf_dir, "config.json")) as f:
        c = json.load(f)
    path = os.path.join(out_dir, "llama-256.gguf")
    w, ref = write_llama_gguf(path, c, load_file(os.path.join(hf_dir, "model.safetensors")), KINDS)
    ref_dir = os.path.join(out_dir, "llama-256-reference")
    finish_gguf(w, hf_dir, ref, ref_dir)
    return path, ref_dir


@pytest.fixture(scope="module")
def llama_gguf(tmp_path_factory):
    d = tmp_path_factory.mktemp("gpu_kernels")
    return llama_to_gguf(build(VARIANT, d), str(d))


@pytest.fixture(scope="module")
def gpu_like_engine(llama_gguf):
    path, ref_dir = llama_gguf
    device = gpu_like_device()
    engine = asyncio.run(Engine.load(path, device=device, context_window=128, prefill_chunk=PREFILL_CHUNK))
    yield engine, ref_dir
    engine.unload()


def test_engine_records_the_gpu_kernels(gpu_like_engine):
    engine, _ = gpu_like_engine
    layer = engine.model.layers[0]
    assert all(
        b.linear.staged for b in (layer.wq, layer.wk, layer.wv, layer.wo, layer.w_gate, layer.w_up, layer.w_down)
    )
    # this file's attn_v is of another type than attn_q and attn_k: the staged kernel still fuses all three
    assert len({b.linear.weight.ggml_type for b in (layer.wq, layer.wv)}) == 2
    assert len(layer.qkv.runs) == 1 and len(layer.gate_up.runs) == 1
    assert layer.attn_norm.absorbed and layer.ffn_norm.absorbed
    assert layer.attention.op.fused  # attention_step (lavapipe is a Vulkan adapter)
    # the default policy's prestage (None) resolved by the model: off at this width (planner.prestage_auto)
    assert engine.model.policy.prestage is False and all(run[2] is None for run in layer.qkv.runs)


@pytest.mark.parametrize("n", [SHORT, LONG], ids=["one-chunk", "three-chunks"])
def test_prefill_logits_match_transformers(gpu_like_engine, n):
    """Tiled matmul and tiled prefill attention over 1 and 3 prefill chunks, then the staged LM head."""
    engine, ref_dir = gpu_like_engine
    assert_logits_match(engine, ref_dir, n, RTOL, "gpu kernels prefill")


def test_decode_steps_match_transformers(gpu_like_engine):
    """N greedy decode steps (staged matvecs with folded norms, attention_step, LM head, tree sampler),
    each checked against transformers run on the same tokens (teacher forcing: no luck with near-ties
    needed): the token we chose is within the tolerance of transformers' best there, and the logprob we
    report for it is transformers' log-softmax within the tolerance."""
    import torch

    from .reference import hf_model

    engine, ref_dir = gpu_like_engine
    ids = prompt_ids(ref_dir, LONG)

    async def run():
        params = SamplingParams(temperature=0.0, logprobs=True)
        return [t async for t in engine.generate(ids, params, max_tokens=N_GREEDY, ignore_eos=True) if t.id >= 0]

    out = asyncio.run(run())
    assert len(out) == N_GREEDY
    model, _ = hf_model(ref_dir)
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids + [t.id for t in out]])).logits[0].double().numpy()
    steps = logits[len(ids) - 1 : -1]  # the logits each of our tokens was drawn from
    scale = np.abs(steps).max(axis=1)
    chosen = steps[np.arange(N_GREEDY), [t.id for t in out]]
    gap = (steps.max(axis=1) - chosen) / scale
    print(f"\ngpu kernels decode: worst gap to transformers' best {gap.max():.1e} of max |logit|")
    assert (gap <= 2 * RTOL).all(), gap
    hf_lp = chosen - np.log(np.exp(steps - steps.max(axis=1, keepdims=True)).sum(axis=1)) - steps.max(axis=1)
    err = np.abs(np.array([t.logprob for t in out]) - hf_lp) / scale
    print(f"gpu kernels decode: logprob error up to {err.max():.1e} of max |logit|")
    assert (err <= 2 * RTOL).all(), err
    assert len({t.id for t in out}) > N_GREEDY // 4


def test_profile_times_short_ops_over_more_reps(gpu_like_engine, monkeypatch):
    """bench --profile (profile_ops): an op kind whose reps took less than min_ms is timed again over more reps
    (at most 100x), so a short op's time is not a readback's jitter; with min_ms 0 it is recorded reps times."""
    from webllm_py.bench import profile_ops

    engine, _ = gpu_like_engine
    embed, calls = engine.model.embed, []
    record = embed.record
    monkeypatch.setattr(embed, "record", lambda rec, n: (calls.append(n), record(rec, n)))
    asyncio.run(profile_ops(engine, 2))
    assert len(calls) == 2
    calls.clear()
    ms = asyncio.run(profile_ops(engine, 2, 1, min_ms=1e9))  # never reached: the cap, 100 x 2 reps, again
    assert len(calls) == 2 + 200 and ms["embed"] > 0


def test_prefill_quantizes_x_once_per_group(gpu_like_engine):
    """Q/K/V read one x: in a prefill step only the first of consecutive members that quantize it alike
    (BoundLinear.x_pass) records quantize_i8; the others' matmuls read the shared scratch (the logits
    tests above check the values)."""
    engine, _ = gpu_like_engine
    group = engine.model.layers[0].qkv
    keys = [b.x_pass for b in group.members]
    assert keys[0] is not None and keys[0] == keys[1]  # Q and K: Q4_0, the same int8 prefill
    quants = {id(b.quant) for b in group.members if b.quant is not None}

    class Counting:
        n = 0

        def dispatch(self, bind_group, *groups):
            self.n += id(bind_group) in quants

    rec = Counting()
    group.record(rec, 8)
    assert rec.n == 1 + sum(b != a for a, b in zip(keys, keys[1:]))


def test_prestaged_decode_matches_staged(gpu_like_engine, llama_gguf):
    """KernelPolicy.prestage: every staged matvec reads x quantized once per token by ops.QuantizeX (the
    norms folded into it) instead of quantizing it in each workgroup (the default at this width), but layer
    0's Q/K/V, whose x the embedding writes quantized (the producers' tilings here have no 32 rows a
    workgroup, so no emits): the same rounding rule, so the same greedy tokens and logprobs."""
    layer = gpu_like_engine[0].model.layers[0]
    assert all(p is None for _, _, p in layer.qkv.runs + layer.gate_up.runs) and layer.w_down.prestage is None

    def check(e, prestage):
        l0, l1 = e.model.layers
        assert all((p is not None) == prestage for _, _, p in l1.qkv.runs + l0.gate_up.runs + l1.gate_up.runs)
        assert all(p is None for _, _, p in l0.qkv.runs) and (e.model.embed.emit is not None) == prestage
        assert (l0.wo.prestage is not None) == prestage and l0.attn_norm.absorbed and l0.ffn_norm.absorbed
        assert e.model.lm_head_emitted is None  # the last w_down cannot emit with these tilings

    same_greedy_policy_on_off(llama_gguf, check)


class _Counting:
    """A recorder that counts dispatches (and their bind groups)."""

    def __init__(self):
        self.groups = []

    def dispatch(self, bind_group, *groups):
        self.groups.append(bind_group)


def test_emitted_decode_matches_staged(llama_gguf):
    """KernelPolicy.prestage with tilings of 32 rows a workgroup for wo (K 256) and w_down (K 768): their
    epilogues write the next group's quantized x (matvec_q4s's emit_next; wo -> ffn_norm + gate/up, w_down
    -> the next layer's attn_norm + Q/K/V, the last w_down -> the LM head with the final norm folded in),
    and the embedding writes layer 0's (embedding.wgsl.j2's emit): no group runs a QuantizeX dispatch, nor
    does the final norm run; the producers quantize their own x in their workgroups (no QuantizeX before
    them). A decode step then records one dispatch fewer than with prestage off (the final norm's), where
    it recorded four more before (the QuantizeX of layer 0's two Q/K/V runs, the last w_down's and the LM
    head's). The same greedy tokens and logprobs as prestage off."""
    from webllm_py.planner import StagedTiling

    counts, logits = {}, {}

    def check(e, prestage):
        m = e.model
        l0, l1 = m.layers
        rec = _Counting()
        m.record(rec, 1, logits=True)
        counts[prestage] = len(rec.groups)
        # Engine.logits of a prompt whose last chunk is one token: the head alone, after that step
        ids = prompt_ids(llama_gguf[1], PREFILL_CHUNK + 1)
        logits[prestage] = np.frombuffer(asyncio.run(e.logits(ids)), np.float32)
        if prestage:
            assert all(run[2] is None for run in l0.qkv.runs + l0.gate_up.runs + l1.qkv.runs + l1.gate_up.runs)
            assert all(op.prestage is None for op in (l0.wo, l1.wo, l0.w_down, l1.w_down))
            assert m.embed.emit is not None and m.lm_head_emitted is not None
            assert m.lm_head_emitted.prestage is None and m.lm_head.prestage is not None  # prefill's head
            assert "eq[" in l0.wo.linear.q4_kernel([256], True, emit_next=l0.ffn_norm.norm).source
            # a single-token step: the embedding's emitting form; neither the final norm nor QuantizeX
            assert m.embed.emit in rec.groups and m.embed.bind_group not in rec.groups
            assert m.final_norm.bind_group not in rec.groups and m.lm_head.prestage.bind_group not in rec.groups
            # a prefill step's head: the final norm, QuantizeX and the head over s.last
            rec = _Counting()
            m.record_head(rec, 3)
            assert rec.groups == [m.final_norm.bind_group, m.lm_head.prestage.bind_group, m.lm_head.matvec]
            # bench --profile times the head a decode step runs (no final norm)
            from webllm_py.bench import profile_ops

            assert "final_norm" not in asyncio.run(profile_ops(e, 1)) and "final_norm" in asyncio.run(
                profile_ops(e, 1, 3)
            )
        else:
            assert m.lm_head_emitted is None and m.embed.emit is None

    tilings = (("k256", StagedTiling(32, 1, 1)), ("k768", StagedTiling(64, 2, 1)))
    same_greedy_policy_on_off(llama_gguf, check, staged_tilings=tilings)
    print(f"\ndispatches a decode step: prestage on {counts[True]}, off {counts[False]}")
    assert counts[True] == counts[False] - 1, counts
    np.testing.assert_allclose(logits[True], logits[False], rtol=0, atol=1e-4 * np.abs(logits[False]).max())


@pytest.mark.parametrize("prestage", [False, True])
@pytest.mark.parametrize("step_merge", [None, False], ids=["merge", "combine"])
def test_attention_emit_decode_matches_staged(llama_gguf, prestage, step_merge):
    """KernelPolicy.attention_emit: single-token attention also writes its output quantized as wo's x
    (attention_step where it merges its slices, attention_combine after the step's partials with step_merge
    False) and wo reads it prestaged (no QuantizeX before it, no quantizing in its workgroups): the same greedy
    tokens and logprobs as with it off; with prestage (wo's tiling of 32 rows a workgroup) wo keeps writing
    gate/up's x in its epilogue."""
    from webllm_py.planner import StagedTiling

    def check(e, on):
        for layer in e.model.layers:
            assert layer.attention.op.step_combine == (step_merge is False)
            if on:
                assert layer.attention.emits is not None and layer.wo.taken == layer.attention.emits
                assert layer.wo.prestage is None
                assert (layer.wo.emits is not None) == prestage and layer.gate_up.runs[0][2] is None
            else:
                assert layer.attention.emits is None and layer.wo.taken is None

    tilings = (("k256", StagedTiling(32, 1, 1)), ("k768", StagedTiling(64, 2, 1)))
    same_greedy_policy_on_off(
        llama_gguf, check, flip="attention_emit", prestage=prestage, step_merge=step_merge, staged_tilings=tilings
    )


@pytest.mark.parametrize("prestage", [True, False])
def test_glu_emit_decode_matches_staged(llama_gguf, prestage):
    """KernelPolicy.glu_emit: the single-token fused gate/up (32 rows a workgroup) also writes its GLU output
    quantized as w_down's x (matvec_q4s's emit_next with glu, no norm) and w_down reads it prestaged (no
    QuantizeX before it, no quantizing in its workgroups): the same greedy tokens and logprobs as with it off,
    and as many dispatches a decode step. prestage: with the tilings of 32 rows a workgroup (w_down keeps
    writing the next Q/K/V's and the LM head's x in its epilogue); without: the planner's tilings (the gate/up
    tiling of 32 rows is plan_fused's, taken only where glu_emit asks)."""
    from webllm_py.planner import StagedTiling

    from webllm_py.bench import profile_ops

    counts, profiled = {}, {}

    def check(e, on):
        m = e.model
        rec = _Counting()
        m.record(rec, 1, logits=True)
        counts[on] = len(rec.groups)
        profiled[on] = set(asyncio.run(profile_ops(e, 1)))  # bench --profile's op kinds of a decode step
        for layer in m.layers:
            gu, down = layer.gate_up, layer.w_down
            t = gu._specs[0][2]
            assert len(gu.runs) == 1 and down.prestage is None
            if on:
                assert t.rows_per_group(256) == 32 and gu.emits is not None and down.taken == gu.emits[1:]
            else:
                assert gu.emits is None and down.taken is None
            assert (down.emits is not None) == prestage and gu.runs[0][2] is None
            assert (gu.taken is not None) == prestage  # wo's emit_next
        if not on and not prestage:
            assert m.layers[0].gate_up._specs[0][2].rows_per_group(256) != 32  # today's glu tiling

    tilings = (("k256", StagedTiling(32, 1, 1)), ("k768", StagedTiling(64, 2, 1))) if prestage else ()
    same_greedy_policy_on_off(llama_gguf, check, flip="glu_emit", prestage=prestage, staged_tilings=tilings)
    print(f"\ndispatches a decode step: glu_emit on {counts[True]}, off {counts[False]}")
    assert counts[True] == counts[False] and profiled[True] == profiled[False], (counts, profiled)
