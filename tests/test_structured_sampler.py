"""The allowed-token mask on the GPU (shaders/sampling_logits), against numpy: greedy picks the argmax
over the allowed tokens only; logprobs are log-softmax over the allowed tokens (the others are -inf);
draws at temperature 1 (with penalties and a bias that would favour masked tokens) never leave the
mask; clearing the mask restores the unconstrained choice."""

import asyncio

import numpy as np
import pytest

from webllm_py.sampling import Sampler, SamplingParams

pytestmark = pytest.mark.gpu


def pack(allowed: np.ndarray) -> bytes:
    """Bitset, bit t%32 of little-endian u32 word t//32 = token t (numpy's own bit packing)."""
    words = -(-allowed.size // 32)
    bits = np.zeros(32 * words, bool)
    bits[: allowed.size] = allowed
    return np.packbits(bits, bitorder="little").tobytes()


def log_softmax(x):
    m = x.max()
    return x - m - np.log(np.exp(x - m).sum())


@pytest.mark.parametrize("vocab", [1000, 49152 + 5])
def test_mask_on_gpu(device, vocab):
    rng = np.random.default_rng(vocab)
    s = Sampler(device, vocab)
    logits_buf = device.create_buffer(4 * vocab)
    op = s.bind(logits_buf)

    def sample():
        with device.recorder() as rec:
            op.record(rec)
        return asyncio.run(s.read())

    for trial in range(3):
        logits = (3 * rng.standard_normal(vocab)).astype(np.float32)
        allowed = rng.random(vocab) < [0.5, 0.01, 0.0005][trial]
        allowed[rng.integers(vocab)] = True
        device.write_buffer(logits_buf, logits)
        top = int(np.argmax(logits))
        bias = {top: 100.0}  # a masked-out favourite must stay out
        allowed[top] = False
        s.set_params(SamplingParams(temperature=0.0, logprobs=True, top_logprobs=3, logit_bias=bias))
        s.reset([top])
        s.set_mask(pack(allowed))
        r = sample()
        masked = np.where(allowed, logits.astype(np.float64), -np.inf)
        assert r.token_id == int(np.argmax(masked))
        ref = log_softmax(masked[allowed])
        assert abs(r.logprob - ref.max()) < 1e-3
        assert all(allowed[i] for i, _ in r.top_logprobs)

        s.set_params(
            SamplingParams(temperature=1.0, seed=trial, repetition_penalty=0.5, presence_penalty=-2.0, logit_bias=bias)
        )
        s.reset([top])
        s.set_mask(pack(allowed))
        for _ in range(20):
            assert allowed[sample().token_id]

        s.set_params(SamplingParams(temperature=0.0))  # set_params lifts the mask
        s.reset()
        assert sample().token_id == top
