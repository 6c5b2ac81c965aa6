"""Matrices past the adapter's storage-binding limit, split into row blocks at upload (weights.split_upload)
and run block by block by every kernel that reads weights.

Most tests lower the limit (NativeDevice(max_binding_size=)) so that small matrices split: each matvec
variant (rows per thread, threads splitting K, the aligned 4-bit one, the staged int8 one), both prefill
matmuls, biases and accumulation, Mixtral's expert stacks (blocks of whole experts), against numpy over
gguf-py's dequantize; then a small Llama whose every large matrix splits, on the CPU adapter's kernels and
on the GPU ones, against transformers. One test keeps lavapipe's own 128 MiB limit: a 150k-vocabulary
model whose untied F16 LM head (and embedding) is 154 MB.
"""

import asyncio
import dataclasses
from types import SimpleNamespace

import numpy as np
import pytest

from webllm_py.engine import Engine
from webllm_py.formats.quants import GGMLType, TensorInfo
from webllm_py.formats.source import BytesSource
from webllm_py.linear import Q4_TILING, Linear, MatmulTiling, MatvecTiling, StagedTiling
from webllm_py.models.mixtral import ExpertMatvec
from webllm_py.models.store import WeightStore
from webllm_py.planner import KernelPolicy

from .linear_helpers import assert_close, f32_buffer, make_weight, read_f32, run_linear, staged_error
from .gguf_models import KINDS, write_llama_gguf

pytestmark = [pytest.mark.gpu]

N, K = 200, 512
# 64 rows of Q8_0 at K = 512 (544 bytes each) and the spare word: Q8_0 and Q4_0 matrices of 200 rows
# split into blocks of 64, 64, 64 and 8 rows.
LIMIT = 64 * 544 + 4


@pytest.fixture(scope="module")
def small_device():
    from webllm_py.gpu.native import NativeDevice

    return NativeDevice(max_binding_size=LIMIT)


def split_matrix(device, raw: bytes, qtype: str, shape: tuple[int, ...]):
    """`raw` as a WeightStore matrix of HF shape `shape` on `device` (split there when past its limit)."""
    info = TensorInfo("w", tuple(reversed(shape)), int(GGMLType[qtype]), 0, len(raw), source=BytesSource(raw))
    return WeightStore(device, {"w": info}).matrix("w")


VARIANTS = {  # name: (qtype, Linear keywords, bias)
    "rows": ("Q8_0", {}, True),  # the CPU adapter's own: matvec_rows / matmul_rows, x bound as a uniform
    "split-k": ("Q4_0", dict(matvec=MatvecTiling(wg=32, rows=2), matmul=MatmulTiling(16, 16, 32, 2, 2)), True),
    "q4-aligned": ("Q4_0", dict(matvec=Q4_TILING), False),
    "staged": ("Q8_0", dict(matvec=StagedTiling(64, 2, 1)), False),
}


@pytest.mark.parametrize("variant", VARIANTS)
def test_split_linear_matches_numpy(small_device, variant):
    dev = small_device
    qtype, kw, with_bias = VARIANTS[variant]
    rng = np.random.default_rng(7)
    raw, w = make_weight(qtype, N, K, rng)
    weight = split_matrix(dev, raw, qtype, (N, K))
    assert [r0 for r0, _ in weight.parts] == [0, 64, 128, 192]
    bias = None
    b = np.zeros(N)
    if with_bias:
        b = rng.standard_normal(N).astype(np.float32)
        info = TensorInfo("b", (N,), int(GGMLType.F32), 0, 4 * N, source=BytesSource(b.tobytes()))
        bias = WeightStore(dev, {"b": info}).bias("b")
    lin = Linear(dev, weight, bias, **kw, policy=KernelPolicy(prefill="f32"))  # the f32 bound; int8 prefill: below
    if variant in ("q4-aligned", "staged"):
        assert all(p.q4 and p.staged == (variant == "staged") for _, p in lin.parts)
    for T in (1, 7):
        x = rng.standard_normal((T, K)).astype(np.float32)
        y0 = rng.standard_normal((T, N)).astype(np.float32)
        y, y_acc = run_linear(dev, lin, x), run_linear(dev, lin, x, y0, accumulate=True) - y0
        if variant == "staged" and T == 1:  # x rounded to int8 blocks on the way in
            assert staged_error(y, x, w) < 1e-5 and staged_error(y_acc, x, w) < 1e-5
            continue
        ref = x.astype(np.float64) @ w.T + b
        assert_close(y, ref, x, w)
        assert_close(y_acc, ref, x, w)


@pytest.mark.parametrize("qtype", ["Q8_0", "Q4_0"])
def test_split_int8_prefill_equals_unsplit(small_device, qtype):
    """The int8 prefill (matmul_i8) of a split weight writes each block's rows at y's full row length
    (out_stride): the same numbers as the whole matrix on a device whose limit does not split it."""
    from webllm_py.gpu.native import NativeDevice
    from webllm_py.linear import MatmulI8Tiling

    rng = np.random.default_rng(11)
    raw, w = make_weight(qtype, N, K, rng)
    lins = [Linear(d, split_matrix(d, raw, qtype, (N, K))) for d in (small_device, NativeDevice())]
    assert len(lins[0].parts) == 4 and not lins[1].parts
    assert all(isinstance(p.matmul_tiling, MatmulI8Tiling) for _, p in lins[0].parts)
    assert isinstance(lins[1].matmul_tiling, MatmulI8Tiling)
    x = rng.standard_normal((7, K)).astype(np.float32)
    split, whole = (run_linear(lin.device, lin, x) for lin in lins)
    assert np.array_equal(split, whole)
    ref = x.astype(np.float64) @ w.T
    assert np.abs(split - ref).max() < 1e-2 * np.abs(ref).max()  # int8 rounding of x (test_matmul_i8 bounds it)


@pytest.mark.parametrize("split_k", [False, True], ids=["thread-per-row", "split-k"])
@pytest.mark.parametrize("stored", [True, False], ids=["stored-stack", "stacked-at-upload"])
def test_split_expert_stack_matches_numpy(small_device, split_k, stored):
    """4 experts of 64 x 512 Q8_0 (34816 bytes each) in blocks of one expert; each token's 2 choices."""
    dev = small_device
    E, n, top_k, T = 4, 64, 2, 3
    rng = np.random.default_rng(11)
    mats = [make_weight("Q8_0", n, K, rng) for _ in range(E)]
    if stored:  # llama.cpp's ffn_*_exps: one [E, n, K] tensor
        stack = split_matrix(dev, b"".join(r for r, _ in mats), "Q8_0", (E, n, K))
    else:  # per-expert tensors (Hugging Face, older GGUF)
        infos = {
            f"e{e}": TensorInfo(f"e{e}", (K, n), int(GGMLType.Q8_0), 0, len(r), source=BytesSource(r))
            for e, (r, _) in enumerate(mats)
        }
        stack = WeightStore(dev, infos).stacked_matrix(list(infos), "stack")
    assert len(stack.parts) == E
    idx = np.array([[3, 0], [1, 2], [2, 3]], np.uint32)
    wts = rng.uniform(0.1, 1, (T, top_k)).astype(np.float32)
    moe = SimpleNamespace(idx=dev.buffer_from(idx.tobytes()), weight=dev.buffer_from(wts.tobytes()))
    # expand (gate/up): each token's row through each of its experts
    x = rng.standard_normal((T, K)).astype(np.float32)
    y = f32_buffer(dev, np.full((T, top_k, n), np.nan))
    with dev.recorder() as rec:
        ExpertMatvec(dev, stack, top_k, combine=False, split_k=split_k).bind(f32_buffer(dev, x), y, moe).record(rec, T)
    got = read_f32(dev, y, T * top_k * n).reshape(T, top_k, n)
    for t in range(T):
        for j in range(top_k):
            w = mats[idx[t, j]][1]
            assert_close(got[t, j][None], x[t : t + 1] @ w.T, x[t : t + 1], w)
    # combine (down): each choice's own row through its expert, weighted, added to the residual
    xs = rng.standard_normal((T, top_k, K)).astype(np.float32)
    y0 = rng.standard_normal((T, n)).astype(np.float32)
    y = f32_buffer(dev, y0)
    with dev.recorder() as rec:
        ExpertMatvec(dev, stack, top_k, combine=True, split_k=split_k).bind(f32_buffer(dev, xs), y, moe).record(rec, T)
    got = read_f32(dev, y, T * n).reshape(T, n)
    ref = y0 + np.stack(
        [sum(wts[t, j] * (xs[t, j].astype(np.float64) @ mats[idx[t, j]][1].T) for j in range(top_k)) for t in range(T)]
    )
    assert np.abs(got - ref).max() < 1e-4 * np.abs(ref).max()


# -- whole models against transformers ----------------------------------------------------------------


def llama_gguf(path, rng_seed: int, kinds: dict, embd: str, head: str, **config):
    """A random untied Llama written to `path` as GGUF, and transformers' model holding the weights as
    the file stores them (the reference)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        tie_word_embeddings=False,
        max_position_embeddings=256,
        rms_norm_eps=1e-5,
        initializer_range=0.05,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        **config,
    )
    torch.manual_seed(rng_seed)
    model = LlamaForCausalLM(cfg).eval()
    t = {k: v.numpy() for k, v in model.state_dict().items()}
    for k in t:
        if k.endswith("norm.weight"):
            t[k] = (1.0 + 0.3 * np.random.default_rng(rng_seed).standard_normal(t[k].shape)).astype(np.float32)
    w, ref = write_llama_gguf(str(path), cfg.to_dict(), t, kinds, embd=embd, head=head)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    model.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v, np.float32)) for k, v in ref.items()})
    return str(path), model


def reference_logits(model, ids) -> np.ndarray:
    import torch

    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits[0, -1].double().numpy()


def engine_logits(engine, ids) -> np.ndarray:
    return np.frombuffer(asyncio.run(engine.logits(ids)), np.float32)[: engine.config.vocab_size].astype(np.float64)


# Prompt lengths, with prefill chunks of 8: 5 (one prefill matmul chunk), 17 (8 + 8, then one token
# through the decode matvecs and fused groups).
LENGTHS = (5, 17)
SMALL = dict(
    vocab_size=512,
    hidden_size=256,
    intermediate_size=768,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=64,
)
# 64 rows of the Q4_0 ffn_down (K = 768: 432 bytes a row): every matrix of SMALL splits but k (Q4_0, 128 x 256)
SMALL_LIMIT = 64 * 432 + 4


@pytest.fixture(scope="module")
def small_llama(tmp_path_factory):
    return llama_gguf(tmp_path_factory.mktemp("row_split") / "small.gguf", 5, KINDS, "q8_0", "q8_0", **SMALL)


@pytest.mark.parametrize("kernels", ["cpu", "gpu"])
def test_small_llama_split_everywhere_matches_transformers(small_llama, kernels):
    """Against the same kernels unsplit: the CPU adapter's logits are equal (each row is summed alike), the
    GPU kernels' within f32 rounding (the unsplit run fuses Q/K/V and gate/up, folding the norms); and
    against transformers within the tolerances of test_model_families (CPU) and of test_model_gpu_kernels
    (GPU: each matvec rounds x to int8; measured 6.9e-3 after 5 tokens, 1.9e-2 after 17, the last of
    them through the decode matvecs, the same split or not)."""
    from webllm_py.gpu.native import NativeDevice

    path, model = small_llama

    def load(limit):
        dev = NativeDevice(max_binding_size=limit)
        if kernels == "gpu":
            dev.info = dataclasses.replace(dev.info, is_fallback=False)
        # one int8 plane of x (this small model's default is two: planner.staged_planes_auto): a plane's q is
        # the same whether the norm is folded (x * w staged, 1 / rms after) or not (its output staged), so split
        # and unsplit agree to f32 rounding; the second plane's residual x - dx q is a difference of f32s whose
        # rounding differs between the two (measured 7e-5 of max |logit| apart)
        policy = KernelPolicy(staged_planes=1)
        # one sequence of 32 positions: each layer's K cache (f32: 16 KiB) fits the lowered limit too
        return asyncio.run(
            Engine.load(path, device=dev, context_window=32, max_sequences=1, prefill_chunk=8, policy=policy)
        )

    engine, plain = load(SMALL_LIMIT), load(None)
    try:
        layer = engine.model.layers[0]
        assert all(len(getattr(layer, n).linear.parts) > 1 for n in ("wq", "wv", "wo", "w_gate", "w_up", "w_down"))
        assert not layer.wk.linear.parts and len(engine.model.lm_head.linear.parts) == 8
        assert layer.qkv.fused is None and layer.gate_up.fused is None  # split members run one by one
        assert (plain.model.layers[0].qkv.fused is not None) == (kernels == "gpu")
        rtol = 2.5e-3 if kernels == "cpu" else 2.5e-2
        ids = [int(i) for i in np.random.default_rng(3).integers(0, SMALL["vocab_size"], max(LENGTHS))]
        for n in LENGTHS:
            ours, unsplit = engine_logits(engine, ids[:n]), engine_logits(plain, ids[:n])
            ref = reference_logits(model, ids[:n])
            err = np.abs(ours - ref).max() / np.abs(ref).max()
            print(f"\nsplit {kernels} n={n}: max |diff| {err:.1e} of max |logit|")
            assert err <= rtol and ours.argmax() == ref.argmax()
            if kernels == "cpu":
                assert np.array_equal(ours, unsplit)
            else:
                assert np.abs(ours - unsplit).max() <= 1e-5 * np.abs(unsplit).max()
    finally:
        engine.unload()
        plain.unload()


def test_150k_vocabulary_head_past_128_mib_matches_transformers(tmp_path, device):
    """An untied F16 head of 150000 x 512 (153.6 MB, past lavapipe's 128 MiB binding) and an F16 embedding
    as large: both split in two blocks at the adapter's own limit; ids from both halves of the table."""
    limit = device.max_binding_size
    assert limit == 128 << 20
    cfg = dict(
        vocab_size=150000,
        hidden_size=512,
        intermediate_size=256,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=128,
    )
    kinds = dict.fromkeys(KINDS, "q8_0")
    path, model = llama_gguf(tmp_path / "vocab150k.gguf", 9, kinds, "f16", "f16", **cfg)
    engine = asyncio.run(Engine.load(path, device=device, context_window=64, prefill_chunk=8))
    try:
        head = engine.model.lm_head.linear
        assert head.weight.ggml_type == GGMLType.F16 and 2 * 150000 * 512 > limit and len(head.parts) == 2
        ids = [int(i) for i in np.random.default_rng(4).integers(0, 150000, max(LENGTHS))]
        assert min(ids) < head.parts[1][0] <= max(ids)
        for n in LENGTHS:
            ours, ref = engine_logits(engine, ids[:n]), reference_logits(model, ids[:n])
            err = np.abs(ours - ref).max() / np.abs(ref).max()
            print(f"\n150k vocabulary n={n}: max |diff| {err:.1e} of max |logit|")
            assert err <= 2.5e-3 and ours.argmax() == ref.argmax()
    finally:
        engine.unload()


def test_kv_cache_sized_from_the_binding_limit(small_llama):
    """context_window=None: as many positions as one layer's K buffer can hold within the limit (below the
    model's 256); a larger context window asked for: a ModelTooLargeError naming the size that fits."""
    from webllm_py.errors import ModelTooLargeError
    from webllm_py.gpu.native import NativeDevice

    path, _ = small_llama
    dev = NativeDevice(max_binding_size=SMALL_LIMIT)
    per_position = SMALL["num_key_value_heads"] * SMALL["head_dim"] * (2 if dev.has_f16 else 4)
    fit = SMALL_LIMIT // (16 * per_position) * 16  # whole blocks of 16 positions
    assert fit < 256
    with pytest.raises(ModelTooLargeError, match=f"context_window <= {fit}, or context_window=None"):
        asyncio.run(Engine.load(path, device=dev, context_window=256, max_sequences=1))
    engine = asyncio.run(Engine.load(path, device=dev, context_window=None, max_sequences=1))
    try:
        assert engine.context_window == fit and engine.cache[None].layer_bytes <= SMALL_LIMIT
    finally:
        engine.unload()
