"""The GGUF matrix: every family the runtime runs x every quant type it reads, one test per cell
(family-qtype). Each cell is a tiny random model built by the family's own transformers config class
(tests/hf_models.py), written as a GGUF file by gguf-py the way llama.cpp's converter lays out that family
(tests/gguf_models.hf_to_gguf), every matrix (embedding, head, projections, experts) in the cell's type.
The reference is transformers running the same model with the weights gguf-py dequantizes from the file's
bytes, so the check is the runtime's, not the quantization's: last-token logits after a 20-token prompt
(three prefill chunks) within the type's tolerance, then greedy tokens equal for as long as
transformers' top-2 margins exceed twice that tolerance.

Shapes: hidden 256, FFN 512, 2 layers (Gemma 3: local + global), 4 query heads over 2 KV heads of 64, a
vocabulary of 320 (SmolLM2's first ids): every matrix's rows are whole 256-element super-blocks, so the
K-quants and IQ4_XS cover all of them. gguf-py quantizes F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1 and Q8_0
from the model's weights; it has no quantizer for Q2_K..Q6_K, IQ4_NL and IQ4_XS, so those tensors are random
valid blocks at the weights' spread (gguf_models.random_blocks), dequantized by gguf-py for the reference.

Size: 9 families x 15 types = 135 cells; 65-86 s here (2 shared cores, lavapipe through native wgpu), most
of it compiling each type's kernels and running transformers. The f16 KV cache the engine uses by default is
covered by tests/test_model_families.py and test_model_gemma.py; this matrix keeps an f32 one (below).
"""

import asyncio

import numpy as np
import pytest

pytest.importorskip("gguf")

from webllm_py.formats.quants import LAYOUTS, GGMLType  # noqa: E402
from webllm_py.linear import prefill_i8_tiling  # noqa: E402
from webllm_py.planner import KernelPolicy  # noqa: E402
from webllm_py.sampling import SamplingParams  # noqa: E402

from .gguf_models import hf_to_gguf  # noqa: E402
from .hf_models import Variant, build  # noqa: E402
from .model_checks import LONG, load_engine  # noqa: E402
from .reference import greedy_steps  # noqa: E402

pytestmark = [pytest.mark.gpu]

N_GREEDY = 8
VOCAB = 320
# |ours - transformers| <= logit_rtol(type) * max|transformers| for the last-token logits. The engine keeps
# an f32 KV cache here (KernelPolicy.kv_cache): with the default f16 one its rounding (~1e-3, the bound of
# tests/test_model_families.py) would hide any kernel error smaller than that. What remains once the weights
# are the same is f32 summation order (measured <= 1.1e-5 over all families) and, where the prefill quantizes
# x to two int8 planes (planner.i8_tiling: Q4_0, Q8_0, Q4_K; Q4_1 too on GPU adapters, not on lavapipe), that
# rounding (measured <= 8.1e-4, Gemma Q4_0).
F32_PATH, I8_PREFILL = 5e-5, 2e-3

SHAPE = dict(
    vocab_size=VOCAB,
    hidden_size=256,
    intermediate_size=512,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
)
ROPE = {"rope_type": "default", "partial_rotary_factor": 0.5}
GEMMA = dict(SHAPE, head_dim=64, rms_norm_eps=1e-6, hidden_activation="gelu_pytorch_tanh")
FAMILIES = [
    Variant(
        "llama",
        "llama",
        "float32",
        seed=1,
        config=dict(SHAPE, head_dim=64, tie_word_embeddings=False, rope_theta=10000.0),
    ),
    Variant(
        "qwen2",
        "qwen2",
        "float32",
        seed=2,  # QKV biases
        config=dict(SHAPE, head_dim=64, tie_word_embeddings=False, rope_theta=1000000.0, use_sliding_window=False),
    ),
    Variant(
        "mistral",
        "mistral",
        "float32",
        seed=3,  # window 6 < the 20-token prompt
        config=dict(SHAPE, head_dim=64, tie_word_embeddings=False, sliding_window=6, rope_theta=10000.0),
    ),
    Variant(
        "mixtral",
        "mixtral",
        "float32",
        seed=4,  # 4 experts, top 2, window 12
        config=dict(
            SHAPE,
            head_dim=64,
            num_local_experts=4,
            num_experts_per_tok=2,
            sliding_window=12,
            tie_word_embeddings=False,
            rms_norm_eps=1e-5,
            rope_theta=10000.0,
        ),
    ),
    Variant(
        "phi2",
        "phi2",
        "float32",
        seed=5,  # half rotates, q/k LayerNorms, biases, fused QKV in the GGUF
        config=dict(
            SHAPE,
            qk_layernorm=True,
            tie_word_embeddings=False,
            hidden_act="gelu_new",
            layer_norm_eps=1e-5,
            rope_scaling=ROPE,
            rope_theta=10000.0,
        ),
    ),
    Variant(
        "stablelm",
        "stablelm",
        "float32",
        seed=6,  # per-head q/k norms, QKV bias, parallel residual
        config=dict(
            SHAPE,
            qk_layernorm=True,
            use_qkv_bias=True,
            use_parallel_residual=True,
            tie_word_embeddings=False,
            rope_scaling=dict(ROPE, partial_rotary_factor=0.25),
            rope_theta=10000.0,
        ),
    ),
    Variant("gemma", "gemma", "float32", seed=7, config=dict(GEMMA, rope_theta=10000.0)),
    # GGUF keeps no query_pre_attn_scalar: llama.cpp takes head_dim (models/gemma.py), so the models do too
    Variant(
        "gemma2",
        "gemma2",
        "float32",
        seed=8,
        config=dict(
            GEMMA,
            rope_theta=10000.0,
            sliding_window=6,
            query_pre_attn_scalar=64,
            attn_logit_softcapping=50.0,
            final_logit_softcapping=30.0,
        ),
    ),
    Variant(
        "gemma3",
        "gemma3",
        "float32",
        seed=9,
        config=dict(
            GEMMA,
            sliding_window=6,
            query_pre_attn_scalar=64,
            layer_types=["sliding_attention", "full_attention"],
            rope_parameters={
                "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                "full_attention": {"rope_type": "default", "rope_theta": 1000000.0},
            },
        ),
    ),
]
BY_NAME = {v.name: v for v in FAMILIES}
# every type the kernels decode: a type added to formats/quants.py joins the matrix
TYPES = [t.name for t, layout in LAYOUTS.items() if layout.supported]
CELLS = [(f, t) for f in BY_NAME for t in TYPES]


def logit_rtol(device, qtype: str) -> float:
    """The bound of a cell: I8_PREFILL where the planner gives this type's prefill the int8 kernel."""
    return I8_PREFILL if prefill_i8_tiling(device, GGMLType[qtype], 256) else F32_PATH


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    """family -> its Hugging Face checkpoint, built once on first use."""
    root, built = tmp_path_factory.mktemp("matrix_models"), {}

    def get(family: str) -> str:
        if family not in built:
            built[family] = build(BY_NAME[family], root)
        return built[family]

    return get


@pytest.mark.parametrize("family,qtype", CELLS, ids=[f"{f}-{t}" for f, t in CELLS])
def test_cell_matches_transformers(hf_dir, tmp_path, device, family, qtype):
    import torch
    from transformers import AutoModelForCausalLM

    path, ref_dir = hf_to_gguf(hf_dir(family), str(tmp_path), qtype.lower())
    rtol = logit_rtol(device, qtype)
    ids = [int(i) for i in np.random.default_rng(len(family)).integers(0, VOCAB, LONG)]
    model = AutoModelForCausalLM.from_pretrained(ref_dir, dtype=torch.float32).eval()
    ref_tokens, ref, margins = greedy_steps(model, ids, N_GREEDY)
    engine = load_engine(path, device, KernelPolicy(kv_cache="f32"))
    try:
        cfg = engine.config
        # llama.cpp writes Mistral as "llama" (a sliding window is then just a key)
        assert (cfg.arch, cfg.vocab_size, engine.checkpoint.tensors["token_embd.weight"].type_name) == (
            {"mistral": "llama"}.get(family, family),
            VOCAB,
            qtype,
        )
        # every matrix in the cell's type; the MoE router, vectors, norms (StableLM's stacked per-head ones
        # too) and biases in F32
        tensors = engine.checkpoint.tensors
        matrices = {n for n, ti in tensors.items() if len(ti.shape) > 1 and "gate_inp" not in n and "norm" not in n}
        assert {tensors[n].type_name for n in matrices} == {qtype}
        assert {ti.type_name for n, ti in tensors.items() if n not in matrices} == {"F32"}
        assert all(c.dtype == "f32" for c in engine.cache)
        ours = np.frombuffer(asyncio.run(engine.logits(ids)), np.float32)[:VOCAB]
        err = np.abs(ours - ref).max() / np.abs(ref).max()
        # Greedy tokens: equal while transformers' top-2 gap exceeds twice the tolerance; past the first
        # near-tie either choice is right and the paths part.
        n = next((i for i, m in enumerate(margins) if m <= 2 * rtol), N_GREEDY)
        print(f"\n{family}-{qtype}: max |diff| {err:.1e} of max |logit| (bound {rtol:.1e}); {n} greedy tokens compared")
        assert err <= rtol
        engine.reset(0)
        _, tokens = asyncio.run(
            engine.complete(ids, params=SamplingParams(temperature=0.0), max_tokens=N_GREEDY, ignore_eos=True)
        )
        assert tokens[:n] == ref_tokens[:n], (n, margins)
    finally:
        engine.unload()
