"""The context window Engine.load allows is that of the KV caches it allocates (KVCaches.plan): a layer
with a sliding window keeps only its window (and a prefill step) per sequence, so a model whose every
attention is windowed (Mistral-style) may run a context past what one full-size cache could bind, and a
model with both kinds (Gemma 2) is still limited by its full cache.

The adapter is lavapipe with its storage-binding limit lowered (NativeDevice(max_binding_size=)) so that a
full cache fits only 128 positions of 2 sequences. Tiny random checkpoints built by transformers
(tests/hf_models.py), f32 weights and an f32 KV cache; the reference is transformers on the same checkpoint.
"""

import asyncio

import numpy as np
import pytest

from webllm_py.engine import Engine
from webllm_py.errors import ModelTooLargeError
from webllm_py.planner import KernelPolicy
from webllm_py.sampling import SamplingParams

from .hf_models import Variant, build
from .model_checks import assert_greedy_parity
from .reference import greedy_steps

pytestmark = [pytest.mark.gpu]

VOCAB, WINDOW, CONTEXT_LENGTH, CHUNK, SEQS = 320, 6, 1024, 8, 2
SHAPE = dict(
    vocab_size=VOCAB,
    hidden_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=32,
    max_position_embeddings=CONTEXT_LENGTH,
    sliding_window=WINDOW,
    tie_word_embeddings=False,
)
MISTRAL = Variant(
    "mistral-all-windowed",
    "mistral",
    "float32",
    tokenizer="mistral",
    seed=23,
    config=dict(SHAPE, intermediate_size=192, rope_theta=10000.0),
)
GEMMA2 = Variant(  # layer 0 local (window 6), layer 1 global
    "gemma2-local-global",
    "gemma2",
    "float32",
    tokenizer="mistral",
    seed=34,
    config=dict(SHAPE, intermediate_size=128, rope_theta=10000.0, hidden_activation="gelu_pytorch_tanh"),
)
POLICY = KernelPolicy(kv_cache="f32")
GREEDY = SamplingParams(temperature=0.0)
BLOCK = 16 * SHAPE["num_key_value_heads"] * SHAPE["head_dim"] * 4  # bytes of one f32 K block of a layer
# The largest weight block is 64 rows of an f32 matrix (64 x 192 x 4 bytes of Mistral's w_down): the limit
# holds it and 16 KV blocks, so a full cache fits 16 // SEQS blocks = 128 positions per sequence.
LIMIT = 16 * BLOCK
FULL_FIT = LIMIT // BLOCK // SEQS * 16
# A windowed cache's pool per sequence: positions pos0 + 1 - WINDOW .. pos0 + CHUNK - 1 of a step, in blocks
WINDOW_POOL = 2


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("context_fit")
    return {v.name: build(v, d) for v in (MISTRAL, GEMMA2)}


@pytest.fixture(scope="module")
def small_device():
    from webllm_py.gpu.native import NativeDevice

    return NativeDevice(max_binding_size=LIMIT)


def load(path, device, context_window, max_sequences=SEQS):
    return asyncio.run(
        Engine.load(
            path,
            device=device,
            context_window=context_window,
            prefill_chunk=CHUNK,
            max_sequences=max_sequences,
            policy=POLICY,
        )
    )


def test_all_windowed_model_runs_past_a_full_caches_fit(models, small_device):
    """context_window=None takes the model's whole context; 150 positions (past the 128 a full cache could
    bind) give the same last-token logits and greedy tokens as transformers."""
    import torch
    from transformers import AutoModelForCausalLM

    path = models[MISTRAL.name]
    engine = load(path, small_device, None)
    try:
        assert engine.context_window == CONTEXT_LENGTH > FULL_FIT
        (cache,) = engine.cache
        assert cache.window == WINDOW and cache.layer_bytes == SEQS * WINDOW_POOL * BLOCK <= LIMIT
    finally:
        engine.unload()

    engine = load(path, small_device, 512)
    try:
        assert engine.context_window == 512
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        rng = np.random.default_rng(5)
        # logits after a 150-token prompt, prefilled in 19 steps through the 2-block pool
        ids = [int(i) for i in rng.integers(0, VOCAB, FULL_FIT + 22)]
        ours = np.frombuffer(asyncio.run(engine.logits(ids)), np.float32)[:VOCAB]
        with torch.no_grad():
            ref = model(input_ids=torch.tensor([ids])).logits[0, -1].double().numpy()
        err = np.abs(ours - ref).max() / np.abs(ref).max()
        print(f"\n{len(ids)} positions: max |diff| {err:.1e} of max |logit|")
        assert err <= 1e-4 and ours.argmax() == ref.argmax()
        # greedy decoding from position 20 to 150, one token at a time
        prompt, n = ids[:20], FULL_FIT + 2
        ref_tokens, _, margins = greedy_steps(model, prompt, n)

        def generate(p, k):
            engine.reset(0)
            return engine.complete(p, params=GREEDY, max_tokens=k, ignore_eos=True)

        assert_greedy_parity(lambda p, k: asyncio.run(generate(p, k))[1], prompt, ref_tokens, margins, 1e-4)
    finally:
        engine.unload()


def test_all_windowed_model_whose_window_pool_does_not_fit(models, small_device):
    """With 9 sequences a window's 2-block pool per sequence is past the limit too: the context is one
    block, and the error names the windowed cache's bytes (its pool, not 4 blocks of the whole context)."""
    ctx = 64
    with pytest.raises(ModelTooLargeError) as e:
        load(models[MISTRAL.name], small_device, ctx, max_sequences=9)
    need = 9 * WINDOW_POOL * BLOCK
    assert need > LIMIT
    msg = str(e.value)
    assert f"{ctx} positions for 9 sequence(s) needs {need} bytes" in msg and f"{WINDOW}-position window" in msg
    assert f"({LIMIT} bytes)" in msg and "context_window <= 16 " in msg


def test_mixed_model_is_limited_by_its_full_cache(models, small_device):
    path = models[GEMMA2.name]
    ctx = 256
    with pytest.raises(ModelTooLargeError) as e:
        load(path, small_device, ctx)
    msg = str(e.value)
    need = ctx // 16 * SEQS * BLOCK  # the global layer's K buffer: the whole context of both sequences
    assert f"{ctx} positions for {SEQS} sequence(s) needs {need} bytes" in msg and "full-attention layers" in msg
    assert f"({LIMIT} bytes)" in msg and f"context_window <= {FULL_FIT} or fewer max_sequences" in msg

    engine = load(path, small_device, None)
    try:
        assert engine.context_window == FULL_FIT
        assert engine.cache[None].layer_bytes == LIMIT
        assert engine.cache[WINDOW].layer_bytes == SEQS * WINDOW_POOL * BLOCK
        _, out = asyncio.run(engine.complete(list(range(1, 21)), params=GREEDY, max_tokens=2, ignore_eos=True))
        assert len(out) == 2
    finally:
        engine.unload()
