"""Our engine against transformers on the same tiny checkpoint: the checks that test_model_hf,
test_model_families and test_model_gemma share (their models differ, the comparison does not)."""
from __future__ import annotations

import asyncio

import numpy as np

from webllm_py.engine import Engine
from webllm_py.sampling import SamplingParams

from .reference import hf_greedy, hf_margins, prompt_ids

PREFILL_CHUNK = 8
LONG, SHORT = 20, 5   # prompt lengths: 3 prefill chunks (8 + 8 + 4), and one partial chunk


def load_engine(path: str, device, policy=None) -> Engine:
    return asyncio.run(Engine.load(path, device=device, context_window=128, prefill_chunk=PREFILL_CHUNK, policy=policy))


def assert_logits_match(engine: Engine, ref_path: str, n: int, rtol: float, label: str = "") -> None:
    """Last-token logits after the first n prompt ids: |ours - transformers| <= rtol * max|transformers|,
    same argmax. `ref_path` is the checkpoint transformers runs (the HF twin of a GGUF under test)."""
    ids = prompt_ids(ref_path, n)
    _, ref = hf_greedy(ref_path, ids, 1)
    ours = np.frombuffer(asyncio.run(engine.logits(ids)), np.float32)[: engine.config.vocab_size]
    err = np.abs(ours - ref).max()
    print(f"\n{label} n={n}: max |diff| {err:.2e} = {err / np.abs(ref).max():.1e} of max |logit|")
    assert err <= rtol * np.abs(ref).max(), (label, err, np.abs(ref).max())
    assert int(ours.argmax()) == int(ref.argmax())


def assert_greedy_match(engine: Engine, ref_path: str, n_tokens: int, rtol: float, label: str = "") -> None:
    """n_tokens greedy tokens after the LONG prompt (prefilled in chunks) equal transformers'."""
    ids = prompt_ids(ref_path, LONG)
    # Seeds were picked so transformers' greedy path has no near-ties: every step's top-2 gap exceeds
    # twice the logit tolerance, so equal tokens is what the tolerance implies.
    assert min(hf_margins(ref_path, ids, n_tokens)) > 2 * rtol, "pick another seed for " + label
    ref, _ = hf_greedy(ref_path, ids, n_tokens)
    _, ours = asyncio.run(engine.complete(ids, params=SamplingParams(temperature=0.0), max_tokens=n_tokens,
                                          ignore_eos=True))
    assert ours == ref
    assert len(set(ref)) > n_tokens // 4  # not a degenerate repeat of one token
