"""Phi-2, StableLM, Mixtral and Mistral with a sliding window, from Hugging Face safetensors
directories, on the native backend, against transformers running the same directory: last-token
logits within tolerance (prompts of one and of three prefill chunks) and greedy tokens identical.

The models are tiny and random, built by transformers' own config classes with every feature of the
family switched on (tests/hf_models.py writes them): Phi-2's partial rotary, qk_layernorm, biases
everywhere, gelu_new MLP beside attention; StableLM's per-head q/k LayerNorms, QKV bias, partial
rotary, parallel and sequential residuals; Mixtral's 4 experts with top-2 routing (each token of a
prefill chunk routes on its own) plus its sliding window; Mistral's sliding window shorter than the
prompt, so prefill chunks, the decode path and the paged cache all cut the window.
"""

import asyncio
import functools
import json
import os

import numpy as np
import pytest

from webllm_py.engine import Engine

from .gguf_models import _adjacent_pairs, add_tokenizer, finish_gguf, gguf_writer, llama_gguf_writer, put_tensor
from .hf_models import FAMILY_VARIANTS, build
from .model_checks import LONG, SHORT, assert_greedy_match, assert_logits_match, load_engine

pytestmark = [pytest.mark.gpu]

N_GREEDY = 16
# |ours - transformers| <= LOGIT_RTOL * max|transformers|: our KV cache is f16 where transformers
# keeps f32; the rest is f32 summation order (tests/test_model_hf.py measured 0.6e-3..1.2e-3 for Llama).
LOGIT_RTOL = 2.5e-3


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("family_models")
    return {v.name: build(v, d) for v in FAMILY_VARIANTS}


@pytest.fixture(scope="module", params=FAMILY_VARIANTS, ids=[v.name for v in FAMILY_VARIANTS])
def case(request, models_dir, device):
    path = models_dir[request.param.name]
    engine = load_engine(path, device)
    yield request.param, path, engine
    engine.reset(0)
    engine.unload()


def test_config(case):
    v, path, engine = case
    cfg = engine.config
    with open(os.path.join(path, "config.json")) as f:
        hf = json.load(f)
    assert (cfg.arch, cfg.n_layers, cfg.dim, cfg.vocab_size) == (
        v.family,
        hf["num_hidden_layers"],
        hf["hidden_size"],
        hf["vocab_size"],
    )
    partial = hf["rope_parameters"].get("partial_rotary_factor", 1.0)
    assert cfg.rot_dim == int(cfg.head_dim * partial)
    assert cfg.sliding_window == hf.get("sliding_window")
    assert cfg.qk_norm == bool(hf.get("qk_layernorm"))
    assert (cfg.n_experts, cfg.n_experts_used) == (hf.get("num_local_experts", 0), hf.get("num_experts_per_tok", 0))


@pytest.mark.parametrize("n", [SHORT, LONG], ids=["one-chunk", "three-chunks"])
def test_last_token_logits_match_transformers(case, n):
    v, path, engine = case
    assert_logits_match(engine, path, n, LOGIT_RTOL, v.name)


def test_greedy_tokens_match_transformers(case):
    """16 greedy tokens after a 20-token prompt that the engine prefills in chunks of 8."""
    v, path, engine = case
    assert_greedy_match(engine, path, N_GREEDY, LOGIT_RTOL, v.name)
    if v.name == "mistral-sliding-window":
        # window 6, blocks of 16: the last step wrote position 34 and read from 29 on, so the first block
        # went back to the pool; asked again, the engine cannot reuse the prompt (its last token would
        # read positions 14..19) and prefills it anew, with the same tokens
        assert len(engine.cache) == 1 and engine.cache[6].window == 6 and engine.cache[6].released(0) == 16
        assert_greedy_match(engine, path, N_GREEDY, LOGIT_RTOL, v.name)


# -- GGUF: Mixtral as llama.cpp writes it ----------------------------------------------------------------
# gguf-py's own writer turns the tiny Mixtral into a GGUF file the way llama.cpp's converter lays it out:
# architecture "llama" with llama.expert_count, Q/K rows permuted so that rotary pairs are adjacent, the
# router as blk.N.ffn_gate_inp, each layer's experts stacked into one [n_experts, out, in] tensor
# (blk.N.ffn_{gate,up,down}_exps) and quantized to Q8_0. The tokenizer metadata is SmolLM2's (same vocabulary).
# Reference: transformers on the Hugging Face directory with the experts replaced by their Q8_0 values.


def mixtral_to_gguf(hf_dir: str, out_dir: str) -> tuple[str, str]:
    """(GGUF path, Hugging Face reference dir with Q8_0-rounded experts)."""
    from safetensors.numpy import load_file

    with open(os.path.join(hf_dir, "config.json")) as f:
        c = json.load(f)
    t = load_file(os.path.join(hf_dir, "model.safetensors"))
    L, E, H, KV = c["num_hidden_layers"], c["num_local_experts"], c["num_attention_heads"], c["num_key_value_heads"]
    path = os.path.join(out_dir, "mixtral-4x2.gguf")
    w = llama_gguf_writer(path, c)
    w.add_expert_count(E)
    w.add_expert_used_count(c["num_experts_per_tok"])
    w.add_sliding_window(c["sliding_window"])
    add_tokenizer(w)

    ref = dict(t)
    w.add_tensor("token_embd.weight", t["model.embed_tokens.weight"])
    w.add_tensor("output_norm.weight", t["model.norm.weight"])
    w.add_tensor("output.weight", t["lm_head.weight"])
    for i in range(L):
        p = f"model.layers.{i}."
        w.add_tensor(f"blk.{i}.attn_norm.weight", t[p + "input_layernorm.weight"])
        w.add_tensor(f"blk.{i}.attn_q.weight", _adjacent_pairs(t[p + "self_attn.q_proj.weight"], H))
        w.add_tensor(f"blk.{i}.attn_k.weight", _adjacent_pairs(t[p + "self_attn.k_proj.weight"], KV))
        w.add_tensor(f"blk.{i}.attn_v.weight", t[p + "self_attn.v_proj.weight"])
        w.add_tensor(f"blk.{i}.attn_output.weight", t[p + "self_attn.o_proj.weight"])
        w.add_tensor(f"blk.{i}.ffn_norm.weight", t[p + "post_attention_layernorm.weight"])
        w.add_tensor(f"blk.{i}.ffn_gate_inp.weight", t[p + "block_sparse_moe.gate.weight"])
        for gg, hf in (("gate", "w1"), ("up", "w3"), ("down", "w2")):
            names = [f"{p}block_sparse_moe.experts.{e}.{hf}.weight" for e in range(E)]
            stored = put_tensor(w, f"blk.{i}.ffn_{gg}_exps.weight", np.stack([t[n] for n in names]), "q8_0")
            for e, n in enumerate(names):
                ref[n] = np.ascontiguousarray(stored[e])
    ref_dir = os.path.join(out_dir, "mixtral-4x2-q8-reference")
    finish_gguf(w, hf_dir, ref, ref_dir)
    return path, ref_dir


@pytest.fixture(scope="module")
def mixtral_gguf(models_dir, tmp_path_factory, device):
    path, ref_dir = mixtral_to_gguf(models_dir["mixtral-4x2"], str(tmp_path_factory.mktemp("gguf")))
    engine = load_engine(path, device)
    yield engine, ref_dir
    engine.unload()


def test_gguf_mixtral_config(mixtral_gguf):
    engine, _ = mixtral_gguf
    cfg = engine.config
    assert (cfg.arch, cfg.n_experts, cfg.n_experts_used, cfg.rope_pairs, cfg.sliding_window) == (
        "mixtral",
        4,
        2,
        "adjacent",
        12,
    )
    assert engine.checkpoint.tensors["blk.0.ffn_gate_exps.weight"].type_name == "Q8_0"


def test_gguf_mixtral_matches_transformers(mixtral_gguf):
    """Q8_0 experts read through their stacked tensor: logits after a 3-chunk prompt and 16 greedy
    tokens agree with transformers running the same (Q8_0-rounded) weights."""
    engine, ref_dir = mixtral_gguf
    assert_logits_match(engine, ref_dir, LONG, LOGIT_RTOL)
    assert_greedy_match(engine, ref_dir, N_GREEDY, LOGIT_RTOL)


# -- GGUF: Phi-2 as llama.cpp writes it ----------------------------------------------------------------
# Architecture "phi2": Q, K and V fused into one attn_qkv matrix and bias (llama.cpp's Phi-2 files), stored
# Q8_0 (the engine splits the quantized rows at upload); fc1 as ffn_up in Q8_0, fc2 as ffn_down in F16;
# LayerNorm weights and biases, q/k norms and the head's bias in F32; rope.dimension_count = the rotary part.


def phi2_to_gguf(hf_dir: str, out_dir: str) -> tuple[str, str]:
    """(GGUF path, Hugging Face reference dir with the weights rounded as stored in the GGUF)."""
    from safetensors.numpy import load_file

    with open(os.path.join(hf_dir, "config.json")) as f:
        c = json.load(f)
    t = load_file(os.path.join(hf_dir, "model.safetensors"))
    L, H, D = c["num_hidden_layers"], c["num_attention_heads"], c["hidden_size"]
    rot = int(D // H * c["rope_parameters"]["partial_rotary_factor"])
    path = os.path.join(out_dir, "phi2.gguf")
    w = gguf_writer(path, "phi2", c)
    w.add_layer_norm_eps(c["layer_norm_eps"])
    w.add_rope_dimension_count(rot)
    w.add_rope_freq_base(c["rope_parameters"]["rope_theta"])
    add_tokenizer(w)

    ref = dict(t)
    put = functools.partial(put_tensor, w)

    put("token_embd.weight", t["model.embed_tokens.weight"])
    for suffix in ("weight", "bias"):
        put(f"output_norm.{suffix}", t[f"model.final_layernorm.{suffix}"])
        put(f"output.{suffix}", t[f"lm_head.{suffix}"])
    for i in range(L):
        p = f"model.layers.{i}."
        a = p + "self_attn."
        for suffix in ("weight", "bias"):
            put(f"blk.{i}.attn_norm.{suffix}", t[p + f"input_layernorm.{suffix}"])
            put(f"blk.{i}.attn_q_norm.{suffix}", t[a + f"q_layernorm.{suffix}"])
            put(f"blk.{i}.attn_k_norm.{suffix}", t[a + f"k_layernorm.{suffix}"])
            put(f"blk.{i}.attn_output.{suffix}", t[a + f"dense.{suffix}"])
        parts = [a + f"{x}_proj.weight" for x in "qkv"]
        qkv = put(f"blk.{i}.attn_qkv.weight", np.concatenate([t[n] for n in parts]), "q8_0")
        put(f"blk.{i}.attn_qkv.bias", np.concatenate([t[a + f"{x}_proj.bias"] for x in "qkv"]))
        r = 0
        for n in parts:
            ref[n] = np.ascontiguousarray(qkv[r : r + t[n].shape[0]])
            r += t[n].shape[0]
        ref[p + "mlp.fc1.weight"] = put(f"blk.{i}.ffn_up.weight", t[p + "mlp.fc1.weight"], "q8_0")
        ref[p + "mlp.fc2.weight"] = put(f"blk.{i}.ffn_down.weight", t[p + "mlp.fc2.weight"], "f16")
        put(f"blk.{i}.ffn_up.bias", t[p + "mlp.fc1.bias"])
        put(f"blk.{i}.ffn_down.bias", t[p + "mlp.fc2.bias"])
    ref_dir = os.path.join(out_dir, "phi2-gguf-reference")
    finish_gguf(w, hf_dir, ref, ref_dir)
    return path, ref_dir


@pytest.fixture(scope="module")
def phi2_gguf(models_dir, tmp_path_factory, device):
    path, ref_dir = phi2_to_gguf(models_dir["phi2"], str(tmp_path_factory.mktemp("gguf_phi2")))
    engine = load_engine(path, device)
    yield engine, ref_dir
    engine.unload()


def test_gguf_phi2_matches_transformers(phi2_gguf):
    """Fused Q8_0 attn_qkv split at upload, partial rotary from rope.dimension_count, LayerNorm eps
    from attention.layer_norm_epsilon: logits and 16 greedy tokens as transformers on the same values."""
    engine, ref_dir = phi2_gguf
    cfg = engine.config
    assert (cfg.arch, cfg.rot_dim, cfg.parallel_residual, cfg.qk_norm, cfg.activation, cfg.rope_pairs) == (
        "phi2",
        16,
        True,
        True,
        "gelu_tanh",
        "halves",
    )
    assert_logits_match(engine, ref_dir, LONG, LOGIT_RTOL)
    assert_greedy_match(engine, ref_dir, N_GREEDY, LOGIT_RTOL)


# -- GGUF: StableLM as llama.cpp writes it ----------------------------------------------------------------
# Architecture "stablelm": per-head q/k norm weights stacked into one [n_heads, head_dim] tensor,
# stablelm.use_parallel_residual, LayerNorm biases, QKV biases; Q8_0 projections, Q4_0 MLP (on a GPU the
# decode step fuses gate, up and the GLU into one 4-bit dispatch).


def stablelm_to_gguf(hf_dir: str, out_dir: str) -> tuple[str, str]:
    """(GGUF path, Hugging Face reference dir with the weights rounded as stored in the GGUF)."""
    from safetensors.torch import load_file as load_torch

    with open(os.path.join(hf_dir, "config.json")) as f:
        c = json.load(f)

    # BF16 checkpoint: numpy has no bfloat16, so read through torch and widen (exact).
    t = {k: v.float().numpy() for k, v in load_torch(os.path.join(hf_dir, "model.safetensors")).items()}
    L, H, KV, D = c["num_hidden_layers"], c["num_attention_heads"], c["num_key_value_heads"], c["hidden_size"]
    path = os.path.join(out_dir, "stablelm.gguf")
    w = gguf_writer(path, "stablelm", c)
    w.add_layer_norm_eps(c["layer_norm_eps"])
    w.add_rope_dimension_count(int(D // H * c["rope_parameters"]["partial_rotary_factor"]))
    w.add_rope_freq_base(c["rope_parameters"]["rope_theta"])
    w.add_parallel_residual(c["use_parallel_residual"])
    add_tokenizer(w)
    ref = dict(t)
    put = functools.partial(put_tensor, w)
    put("token_embd.weight", t["model.embed_tokens.weight"])
    put("output_norm.weight", t["model.norm.weight"])
    put("output_norm.bias", t["model.norm.bias"])
    put("output.weight", t["lm_head.weight"])
    for i in range(L):
        p = f"model.layers.{i}."
        a = p + "self_attn."
        put(f"blk.{i}.attn_norm.weight", t[p + "input_layernorm.weight"])
        put(f"blk.{i}.attn_norm.bias", t[p + "input_layernorm.bias"])
        for x in "qkv":
            ref[a + f"{x}_proj.weight"] = put(f"blk.{i}.attn_{x}.weight", t[a + f"{x}_proj.weight"], "q8_0")
            put(f"blk.{i}.attn_{x}.bias", t[a + f"{x}_proj.bias"])
        for x, n in (("q", H), ("k", KV)):
            put(f"blk.{i}.attn_{x}_norm.weight", np.stack([t[a + f"{x}_layernorm.norms.{h}.weight"] for h in range(n)]))
        put(f"blk.{i}.attn_output.weight", t[a + "o_proj.weight"])
        for hf, gg in (("gate_proj", "ffn_gate"), ("up_proj", "ffn_up"), ("down_proj", "ffn_down")):
            ref[p + f"mlp.{hf}.weight"] = put(f"blk.{i}.{gg}.weight", t[p + f"mlp.{hf}.weight"], "q4_0")
    ref_dir = os.path.join(out_dir, "stablelm-gguf-reference")
    finish_gguf(w, hf_dir, ref, ref_dir)
    return path, ref_dir


def test_gguf_stablelm_matches_transformers(models_dir, tmp_path, device):
    """Stacked per-head q/k norms, parallel residual from stablelm.use_parallel_residual, partial rotary,
    Q4_0 MLP: logits and 16 greedy tokens as transformers on the same values."""
    path, ref_dir = stablelm_to_gguf(models_dir["stablelm-parallel"], str(tmp_path))
    engine = load_engine(path, device)
    try:
        cfg = engine.config
        assert (cfg.arch, cfg.rot_dim, cfg.parallel_residual, cfg.qk_norm, cfg.qkv_bias) == (
            "stablelm",
            8,
            True,
            True,
            True,
        )
        assert_logits_match(engine, ref_dir, LONG, LOGIT_RTOL)
        assert_greedy_match(engine, ref_dir, N_GREEDY, LOGIT_RTOL)
    finally:
        engine.unload()


# -- malformed checkpoints of these families: typed errors ------------------------------------------------


def _copy(models_dir, name, tmp_path):
    import shutil

    dst = tmp_path / name
    shutil.copytree(models_dir[name], dst)
    return dst


def _edit_config(path, **changes):
    cfg = json.loads((path / "config.json").read_text())
    cfg.update(changes)
    (path / "config.json").write_text(json.dumps(cfg))


def test_unsupported_activation(models_dir, tmp_path, device):
    from webllm_py.errors import UnsupportedModelError

    path = _copy(models_dir, "phi2", tmp_path)
    _edit_config(path, hidden_act="relu")
    with pytest.raises(UnsupportedModelError, match="activation 'relu' is not supported"):
        asyncio.run(Engine.load(str(path), device=device, context_window=64, prefill_chunk=8))


def test_more_experts_per_token_than_experts(models_dir, tmp_path, device):
    from webllm_py.errors import ModelFormatError

    path = _copy(models_dir, "mixtral-4x2", tmp_path)
    _edit_config(path, num_experts_per_tok=5)
    with pytest.raises(ModelFormatError, match="mixture of 4 experts cannot use 5"):
        asyncio.run(Engine.load(str(path), device=device, context_window=64, prefill_chunk=8))


def test_checkpoint_with_fewer_experts_than_config(models_dir, tmp_path, device):
    """config.json promises 5 experts; the router (and weights) hold 4."""
    from webllm_py.errors import ModelFormatError

    path = _copy(models_dir, "mixtral-4x2", tmp_path)
    _edit_config(path, num_local_experts=5)
    with pytest.raises(ModelFormatError, match=r"router 'blk\.0\.ffn_gate_inp\.weight' has shape \[4, 64\]"):
        asyncio.run(Engine.load(str(path), device=device, context_window=64, prefill_chunk=8))
