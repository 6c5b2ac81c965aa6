"""Gemma, Gemma 2 and Gemma 3 (text) from Hugging Face safetensors directories, on the native backend,
against transformers running the same directory: last-token logits within tolerance (prompts of one
and of three prefill chunks) and greedy tokens identical.

The models are tiny and random, built by transformers' own config classes (tests/hf_models.py writes
them) with every feature of the family on: GeGLU, (1 + w) norms, sqrt(dim) embedding scale and the
tied head everywhere; Gemma 2's sandwich norms, alternating local/global layers, query_pre_attn_scalar
!= head_dim, attention and final logit softcaps; Gemma 3's per-head q/k norms, its own layer pattern,
a local rope base and a linearly scaled global rope, and a final softcap. The sliding window (6) is
shorter than the 20-token prompt, so prefill chunks, decode steps and the paged cache all cut it.
"""

import asyncio
import json
import os

import numpy as np
import pytest

from webllm_py.kv_cache import window_blocks
from webllm_py.sampling import SamplingParams

from .hf_models import Variant, build
from .model_checks import LONG, PREFILL_CHUNK, SHORT, assert_greedy_match, assert_logits_match, load_engine
from .reference import hf_greedy, hf_margins, prompt_ids

pytestmark = [pytest.mark.gpu]

N_GREEDY = 16
# |ours - transformers| <= LOGIT_RTOL * max|transformers|: our KV cache is f16 where transformers
# keeps f32; the rest is f32 summation order. Twice the Llama tests' 2.5e-3: the random norm weights
# (1 + 0.3 N(0,1), stored as w of Gemma's (1 + w)) double every norm's output, q/k norms included, so
# attention scores are larger and the cache's f16 rounding shows more. Measured up to 4.7e-3 (Gemma 3,
# 20-token prompt) with an f16 cache and 4e-6 with an f32 one.
LOGIT_RTOL = 5e-3
WINDOW = 6

SHAPE = dict(
    hidden_size=64,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=32,
    max_position_embeddings=256,
    rms_norm_eps=1e-6,
    hidden_activation="gelu_pytorch_tanh",
)
GEMMA_VARIANTS = [
    # Gemma (1): GeGLU, (1 + w) norms, scaled embedding, tied head; full attention.
    Variant(
        "gemma",
        "gemma",
        "float32",
        tokenizer="mistral",
        seed=8,
        config=dict(
            SHAPE, intermediate_size=160, num_hidden_layers=2, rope_theta=10000.0, hidden_act="gelu_pytorch_tanh"
        ),
    ),
    # Gemma 2: local, global, local; queries scaled by 48^-1/2 (head_dim 32); both softcaps bite.
    Variant(
        "gemma2-softcap",
        "gemma2",
        "bfloat16",
        tokenizer="mistral",
        seed=34,
        config=dict(
            SHAPE,
            intermediate_size=128,
            num_hidden_layers=3,
            rope_theta=10000.0,
            sliding_window=WINDOW,
            query_pre_attn_scalar=48,
            attn_logit_softcapping=5.0,
            final_logit_softcapping=8.0,
        ),
    ),
    # Gemma 3: q/k norms; layers local, local, global, local; local rope base 10^4, global 10^6 scaled
    # linearly by 4; queries scaled by 24^-1/2; a final softcap.
    Variant(
        "gemma3-local-global",
        "gemma3",
        "float32",
        tokenizer="mistral",
        seed=94,
        config=dict(
            SHAPE,
            intermediate_size=128,
            num_hidden_layers=4,
            sliding_window=WINDOW,
            layer_types=["sliding_attention", "sliding_attention", "full_attention", "sliding_attention"],
            rope_parameters={
                "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                "full_attention": {"rope_type": "linear", "factor": 4.0, "rope_theta": 1000000.0},
            },
            query_pre_attn_scalar=24,
            final_logit_softcapping=10.0,
        ),
    ),
]


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("gemma_models")
    return {v.name: build(v, d) for v in GEMMA_VARIANTS}


@pytest.fixture(scope="module", params=GEMMA_VARIANTS, ids=[v.name for v in GEMMA_VARIANTS])
def case(request, models_dir, device):
    path = models_dir[request.param.name]
    engine = load_engine(path, device)
    yield request.param, path, engine
    engine.reset(0)
    engine.unload()


def test_config(case):
    v, path, engine = case
    cfg, hf = engine.config, json.load(open(os.path.join(path, "config.json")))
    g = cfg.options
    assert (cfg.arch, cfg.n_layers, cfg.dim, cfg.head_dim, cfg.vocab_size, cfg.activation) == (
        v.family,
        hf["num_hidden_layers"],
        hf["hidden_size"],
        hf["head_dim"],
        hf["vocab_size"],
        "gelu_tanh",
    )
    assert cfg.tie_embeddings and g.norm_offset == 1.0 and g.embed_scale == hf["hidden_size"] ** 0.5
    assert g.local_layers == tuple(t == "sliding_attention" for t in hf.get("layer_types") or [None] * cfg.n_layers)
    assert g.attn_scale == (hf.get("query_pre_attn_scalar") or hf["head_dim"]) ** -0.5
    if v.family != "gemma":
        assert cfg.sliding_window == WINDOW < LONG and g.sandwich
        assert g.final_softcap == hf["final_logit_softcapping"]
    assert g.attn_softcap == (hf["attn_logit_softcapping"] if v.family == "gemma2" else None)
    assert cfg.qk_norm == (v.family == "gemma3")


@pytest.mark.parametrize("n", [SHORT, LONG], ids=["one-chunk", "three-chunks"])
def test_last_token_logits_match_transformers(case, n):
    v, path, engine = case
    assert_logits_match(engine, path, n, LOGIT_RTOL, v.name)


def test_greedy_tokens_match_transformers(case):
    """16 greedy tokens after a 20-token prompt that the engine prefills in chunks of 8."""
    v, path, engine = case
    assert_greedy_match(engine, path, N_GREEDY, LOGIT_RTOL, v.name)


def test_local_layers_cache_the_window_and_a_second_turn_reuses_the_prefix(case):
    """The local layers keep K/V in a cache of their own (window 6, blocks of 16): over a 20-token
    prompt and 16 greedy tokens (6 windows) its blocks in use stay within window_blocks while the global
    cache's grow with the sequence. A second turn (the first's tokens + 5 more) reuses the first turn's
    prefix in both caches and prefills the rest as one chunk; asked again, it reuses all but the last
    token and runs that one as a decode step. Both last-token logits are transformers' within
    tolerance, and the greedy tokens after it equal transformers' up to its first near-tie."""
    v, path, engine = case
    caches = engine.cache
    if v.family == "gemma":  # full attention everywhere: one cache, nothing released
        assert len(caches) == 1 and caches[None].layers == list(range(engine.config.n_layers))
        return
    local, glob = caches[WINDOW], caches[None]
    is_local = engine.config.options.local_layers
    assert local.layers == [i for i, t in enumerate(is_local) if t]
    assert glob.layers == [i for i, t in enumerate(is_local) if not t]
    bound = window_blocks(WINDOW, PREFILL_CHUNK, local.block_size)
    assert local.num_blocks == 2 * bound < glob.num_blocks == 2 * -(-engine.context_window // glob.block_size)
    ids = prompt_ids(path, LONG)
    engine.reset(0)
    greedy = SamplingParams(temperature=0.0)

    async def turn1():
        held, toks = [], []
        async for t in engine.generate(ids, params=greedy, max_tokens=16, ignore_eos=True):
            toks += [t.id] if t.id >= 0 else []
            held.append((sum(b is not None for b in local.blocks(0)), len(glob.blocks(0))))
        return toks, held

    toks, held = asyncio.run(turn1())
    assert toks == hf_greedy(path, ids, 16)[0]
    # 35 positions written: the global cache holds their 3 blocks, the local one at most `bound`
    assert max(h for h, _ in held) <= bound and [g for _, g in held] == sorted(g for _, g in held) == [
        g for _, g in held
    ]
    assert held[-1][1] == 3 and local.released(0) == 16 and glob.released(0) == 0

    ids2 = ids + toks + prompt_ids(path, 10)[5:]
    ref_tokens, ref = hf_greedy(path, ids2, 8)
    for cached in (len(ids) + 15, len(ids2) - 1):
        asyncio.run(engine.complete(ids2, params=greedy, max_tokens=1, ignore_eos=True))
        assert engine.last_stats.cached_prompt_tokens == cached
        ours = np.frombuffer(asyncio.run(engine.device.read_buffer(engine.model.state.logits)), np.float32)
        err = np.abs(ours[: engine.config.vocab_size] - ref).max()
        print(f"\n{v.name} second turn, {cached} cached: max |diff| {err:.2e} = {err / np.abs(ref).max():.1e}")
        assert err <= LOGIT_RTOL * np.abs(ref).max()
    n = next((i for i, m in enumerate(hf_margins(path, ids2, 8)) if m <= 2 * LOGIT_RTOL), 8)
    _, ours_tokens = asyncio.run(engine.complete(ids2, params=greedy, max_tokens=8, ignore_eos=True))
    assert ours_tokens[:n] == ref_tokens[:n]
    assert sum(b is not None for b in local.blocks(0)) <= bound and len(glob.blocks(0)) == -(-(len(ids2) + 7) // 16)
    engine.reset(0)


# -- GGUF: Gemma 2 as llama.cpp writes it ----------------------------------------------------------------
# Architecture "gemma2": norm weights stored as 1 + w (llama.cpp's converter adds the one), Q/K left in
# Hugging Face's rotate-half layout (llama.cpp rotates Gemma in NEOX mode), the head tied to token_embd,
# softcaps and the window as metadata, no query_pre_attn_scalar (head_dim is implied below 27B, so the
# model here keeps it equal to head_dim). Attention in F16, MLP in Q8_0 (Q4_0 for down), norms in F32;
# the SmolLM2 vocabulary, whose tokenizer metadata the GGUF carries. Softcaps are Gemma 2's own (50, 30):
# the biting ones of the safetensors variant above squash this random model's logits into near-ties.
# Reference: transformers on the Hugging Face directory with the weights as the GGUF stores them.
GEMMA2_GGUF = Variant(
    "gemma2-gguf",
    "gemma2",
    "float32",
    seed=35,
    config=dict(
        SHAPE,
        intermediate_size=128,
        num_hidden_layers=3,
        rope_theta=10000.0,
        sliding_window=WINDOW,
        query_pre_attn_scalar=32,
        attn_logit_softcapping=50.0,
        final_logit_softcapping=30.0,
    ),
)


def gemma2_to_gguf(hf_dir: str, out_dir: str, kinds: dict | None = None) -> tuple[str, str]:
    """(GGUF path, Hugging Face reference dir with the weights rounded as stored in the GGUF); kinds:
    each layer matrix's type by GGUF name, instead of the mix above."""
    import functools

    from safetensors.numpy import load_file

    from .gguf_models import add_tokenizer, finish_gguf, gguf_writer, put_tensor

    with open(os.path.join(hf_dir, "config.json")) as f:
        c = json.load(f)
    t = load_file(os.path.join(hf_dir, "model.safetensors"))
    path = os.path.join(out_dir, "gemma2.gguf")
    w = gguf_writer(path, "gemma2", c)
    w.add_key_length(c["head_dim"])
    w.add_value_length(c["head_dim"])
    w.add_layer_norm_rms_eps(c["rms_norm_eps"])
    w.add_float32("gemma2.attn_logit_softcapping", c["attn_logit_softcapping"])
    w.add_float32("gemma2.final_logit_softcapping", c["final_logit_softcapping"])
    w.add_sliding_window(c["sliding_window"])
    add_tokenizer(w)

    ref = dict(t)
    put = functools.partial(put_tensor, w)
    ref["model.embed_tokens.weight"] = put("token_embd.weight", t["model.embed_tokens.weight"], "q8_0")
    put("output_norm.weight", t["model.norm.weight"] + 1)
    norms = {
        "input_layernorm": "attn_norm",
        "post_attention_layernorm": "post_attention_norm",
        "pre_feedforward_layernorm": "ffn_norm",
        "post_feedforward_layernorm": "post_ffw_norm",
    }
    mats = {
        "self_attn.q_proj": ("attn_q", "f16"),
        "self_attn.k_proj": ("attn_k", "f16"),
        "self_attn.v_proj": ("attn_v", "f16"),
        "self_attn.o_proj": ("attn_output", "f16"),
        "mlp.gate_proj": ("ffn_gate", "q8_0"),
        "mlp.up_proj": ("ffn_up", "q8_0"),
        "mlp.down_proj": ("ffn_down", "q4_0"),
    }
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}."
        for hf, name in norms.items():
            put(f"blk.{i}.{name}.weight", t[p + hf + ".weight"] + 1)
        for hf, (name, kind) in mats.items():
            kind = (kinds or {}).get(name, kind)
            ref[p + hf + ".weight"] = np.ascontiguousarray(put(f"blk.{i}.{name}.weight", t[p + hf + ".weight"], kind))
    ref_dir = os.path.join(out_dir, "gemma2-gguf-reference")
    finish_gguf(w, hf_dir, ref, ref_dir)
    return path, ref_dir


@pytest.fixture(scope="module")
def gemma2_gguf(tmp_path_factory, device):
    d = tmp_path_factory.mktemp("gemma2_gguf")
    path, ref_dir = gemma2_to_gguf(build(GEMMA2_GGUF, d), str(d))
    engine = load_engine(path, device)
    yield engine, ref_dir
    engine.unload()


def test_gguf_gemma2_matches_transformers(gemma2_gguf):
    """Config from gemma2.* metadata (softcaps, window, local/global layers, norms already + 1, tied
    head), then logits after a 3-chunk prompt and 16 greedy tokens as transformers on the same values."""
    engine, ref_dir = gemma2_gguf
    cfg, g = engine.config, engine.config.options
    assert (cfg.arch, cfg.sliding_window, cfg.tie_embeddings, cfg.rope_pairs) == ("gemma2", WINDOW, True, "halves")
    assert (g.norm_offset, g.attn_softcap, g.final_softcap, g.local_layers) == (0.0, 50.0, 30.0, (True, False, True))
    assert g.attn_scale == 32**-0.5 and g.sandwich
    assert_logits_match(engine, ref_dir, LONG, LOGIT_RTOL)
    assert_greedy_match(engine, ref_dir, N_GREEDY, LOGIT_RTOL)


# The same family on the GPU adapters' kernels (lavapipe told it is a GPU, as tests/test_model_gpu_kernels.py
# does for Llama): 4-bit and 8-bit matrices whose rows (256, 512) take the staged int8 matvec, which rounds
# x to int8 blocks of 32 (llama.cpp's q8_1 rule). A one-token step runs every matvec that way: measured
# 2.0e-2 of max |logit| after 17 prompt ids, the same with the fusion pass switched off (5.5e-3 after 16,
# where only the head is a matvec; 7.1e-4 with the CPU adapter's kernels).
GPU_RTOL = 3e-2
GEMMA2_GPU = Variant(
    "gemma2-gpu",
    "gemma2",
    "float32",
    seed=36,
    init_std=0.05,
    config=dict(
        SHAPE,
        hidden_size=256,
        head_dim=64,
        intermediate_size=512,
        num_hidden_layers=2,
        rope_theta=10000.0,
        sliding_window=WINDOW,
        query_pre_attn_scalar=64,
        attn_logit_softcapping=50.0,
        final_logit_softcapping=30.0,
    ),
)


@pytest.fixture(scope="module")
def gemma2_gpu_files(tmp_path_factory):
    """(GGUF path, reference dir) of GEMMA2_GPU with the GPU tests' matrix types."""
    from .gguf_models import KINDS

    d = tmp_path_factory.mktemp("gemma2_gpu")
    return gemma2_to_gguf(build(GEMMA2_GPU, d), str(d), kinds=KINDS)


@pytest.fixture(scope="module")
def gemma2_gpu(gemma2_gpu_files):
    import dataclasses

    from webllm_py.gpu.native import NativeDevice

    path, ref_dir = gemma2_gpu_files
    device = NativeDevice()
    device.info = dataclasses.replace(device.info, is_fallback=False)  # pick the GPU kernels
    engine = load_engine(path, device)
    yield engine, ref_dir
    engine.unload()


def test_gemma_fuses_as_llama_does(gemma2_gpu):
    """Gemma's layer goes through the one fusion pass (models/layer.py) as Llama's does: Q/K/V (one dispatch
    though attn_v is Q8_0 beside Q4_0 q and k: the staged kernel mixes types) and gate/up with the GeGLU in one dispatch each, both norms folded
    into them, RoPE into attention_step. Then the last logits of prompts whose last chunk is one token
    (8 + 1, 8 + 8 + 1: the fused decode path, the second past the window) as transformers' on the weights
    as stored."""
    engine, ref_dir = gemma2_gpu
    layer = engine.model.layers[0]
    assert len(layer.qkv.runs) == 1 and len(layer.gate_up.runs) == 1
    assert layer.attn_norm.absorbed and layer.ffn_norm.absorbed and layer.rope.absorbed
    for n in (9, 17):
        assert_logits_match(engine, ref_dir, n, GPU_RTOL, "gemma2 gpu kernels")


def test_gemma_prestaged_matches_staged(gemma2_gpu_files):
    """KernelPolicy.prestage on Gemma 2 (off by default: its residual adds are the sandwich norms, which
    write no quantized x): the embedding (times sqrt(dim)) writes layer 0's quantized x, its attn_norm
    folded in, for Q/K/V's one dispatch (Q4_0 q and k, Q8_0 v); the other groups and the head read
    QuantizeX's; the final softcap after the head as before. The same greedy tokens and logprobs as
    prestage off."""
    from .model_checks import same_greedy_policy_on_off

    def check(e, prestage):
        m = e.model
        l0, l1 = m.layers
        assert (m.embed.emit is not None) == prestage and len(l0.qkv.runs) == 1
        assert all(run[2] is None for run in l0.qkv.runs)
        assert all((run[2] is not None) == prestage for run in l0.gate_up.runs + l1.qkv.runs + l1.gate_up.runs)
        assert m.lm_head_emitted is None and m.softcap is not None  # the last residual add is a norm

    same_greedy_policy_on_off(gemma2_gpu_files, check)
