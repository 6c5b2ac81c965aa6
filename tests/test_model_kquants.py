"""Small random Llama GGUFs in the type mixes of llama.cpp's Q5_K_M, Q3_K_M and Q2_K (plus IQ4_XS /
IQ4_NL / Q5_1 rows) load and give the logits transformers gives on the same weights.

gguf-py cannot quantize the k-quants, so each weight is random blocks with sane f16 scales
(tests/test_linear.make_weight); the reference weights are gguf-py's dequantize of those bytes,
Q/K rows put back from llama.cpp's adjacent rotary pairs into Hugging Face's layout."""

import json
import os

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")

from .hf_models import Variant, build
from .model_checks import LONG, assert_logits_match, load_engine
from .linear_helpers import make_weight
from .gguf_models import GGUF_TO_HF_LINEAR, add_tokenizer, finish_gguf, llama_gguf_writer

pytestmark = [pytest.mark.gpu]

LOGIT_RTOL = 2.5e-3  # as tests/test_model_families.py: f16 KV cache against transformers' f32
# Rows of 256 and 512: every k-quant needs whole 256-element super-blocks.
LLAMA = Variant(
    "llama-kquant",
    "llama",
    "float32",
    seed=7,
    config=dict(
        hidden_size=256,
        intermediate_size=512,
        num_hidden_layers=2,
        tie_word_embeddings=False,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=64,
        max_position_embeddings=256,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
    ),
)
# Per tensor: (layer 0 type, layer 1 type), after llama.cpp's mixes (attn_v / ffn_down get more bits in
# some layers; the head is Q6_K); token_embd, output, then blk tensors.
MIXES = {
    "Q5_K_M": dict(
        token_embd="Q5_K",
        output="Q6_K",
        attn_q="Q5_K",
        attn_k="Q5_K",
        attn_v=("Q6_K", "Q5_K"),
        attn_output="Q5_K",
        ffn_gate="Q5_K",
        ffn_up="Q5_K",
        ffn_down=("Q6_K", "Q5_K"),
    ),
    "Q3_K_M": dict(
        token_embd="Q3_K",
        output="Q6_K",
        attn_q="Q3_K",
        attn_k="Q3_K",
        attn_v=("Q5_K", "Q4_K"),
        attn_output="Q4_K",
        ffn_gate="Q3_K",
        ffn_up="Q3_K",
        ffn_down=("Q5_K", "Q4_K"),
    ),
    "Q2_K": dict(
        token_embd="Q2_K",
        output="Q6_K",
        attn_q="Q2_K",
        attn_k="Q2_K",
        attn_v="Q3_K",
        attn_output="Q3_K",
        ffn_gate="Q2_K",
        ffn_up="Q2_K",
        ffn_down="Q3_K",
    ),
    "IQ4_XS": dict(
        token_embd="IQ4_XS",
        output="Q6_K",
        attn_q="IQ4_XS",
        attn_k="IQ4_NL",
        attn_v="Q5_1",
        attn_output="IQ4_XS",
        ffn_gate="IQ4_NL",
        ffn_up="IQ4_XS",
        ffn_down="IQ4_XS",
    ),
}


def _hf_pairs(w, n_heads: int):
    """Rows of each head from llama.cpp's adjacent rotary pairs (2i, 2i+1) back to rotate-half (i, i + d/2)."""
    rows, cols = w.shape
    d = rows // n_heads
    return w.reshape(n_heads, d // 2, 2, cols).swapaxes(1, 2).reshape(rows, cols)


def mix_to_gguf(hf_dir: str, out_dir: str, mix: str) -> tuple[str, str]:
    from safetensors.numpy import load_file

    with open(os.path.join(hf_dir, "config.json")) as f:
        c = json.load(f)
    t = load_file(os.path.join(hf_dir, "model.safetensors"))
    L, H, KV = c["num_hidden_layers"], c["num_attention_heads"], c["num_key_value_heads"]
    path = os.path.join(out_dir, f"llama-{mix}.gguf")
    w = llama_gguf_writer(path, c)
    add_tokenizer(w)
    rng = np.random.default_rng(sum(map(ord, mix)))
    ref = dict(t)

    def put(name: str, hf_name: str, qtype: str, n_heads: int = 0):
        n, k = t[hf_name].shape
        raw, deq = make_weight(qtype, n, k, rng)
        qt = gguf.GGMLQuantizationType[qtype]
        w.add_tensor(name, np.frombuffer(raw, np.uint8).reshape(n, -1), raw_dtype=qt)
        deq = deq.astype(np.float32)
        ref[hf_name] = np.ascontiguousarray(_hf_pairs(deq, n_heads) if n_heads else deq)

    types = MIXES[mix]
    put("token_embd.weight", "model.embed_tokens.weight", types["token_embd"])
    w.add_tensor("output_norm.weight", t["model.norm.weight"])
    put("output.weight", "lm_head.weight", types["output"])
    for i in range(L):
        p = f"model.layers.{i}."
        w.add_tensor(f"blk.{i}.attn_norm.weight", t[p + "input_layernorm.weight"])
        w.add_tensor(f"blk.{i}.ffn_norm.weight", t[p + "post_attention_layernorm.weight"])
        for gg, hf in GGUF_TO_HF_LINEAR.items():
            ty = types[gg] if isinstance(types[gg], str) else types[gg][i]
            put(f"blk.{i}.{gg}.weight", p + hf + ".weight", ty, {"attn_q": H, "attn_k": KV}.get(gg, 0))
    ref_dir = os.path.join(out_dir, f"llama-{mix}-reference")
    finish_gguf(w, hf_dir, ref, ref_dir)
    return path, ref_dir


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    return build(LLAMA, tmp_path_factory.mktemp("kquant_models"))


@pytest.mark.parametrize("mix", list(MIXES))
def test_mix_matches_transformers(llama_dir, tmp_path, device, mix):
    path, ref_dir = mix_to_gguf(llama_dir, str(tmp_path), mix)
    engine = load_engine(path, device)
    try:
        types = {ti.type_name for ti in engine.checkpoint.tensors.values()}
        want = {v for x in MIXES[mix].values() for v in ((x,) if isinstance(x, str) else x)}
        assert want <= types
        assert_logits_match(engine, ref_dir, LONG, LOGIT_RTOL)
    finally:
        engine.unload()
