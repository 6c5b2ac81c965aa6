"""GPU sampling vs numpy references written from the definitions:
greedy = argmax (ties -> lowest id, torch.argmax's rule); the sampled distribution under
temperature/top-k/top-p/min-p = Hugging Face's warpers applied in HF's order; repetition penalty as
HF's RepetitionPenaltyLogitsProcessor; frequency/presence penalties as OpenAI documents them;
logprobs = log_softmax."""

import asyncio
import math

import numpy as np
import pytest

from webllm_py.errors import RequestError
from webllm_py.planner import SWIFTSHADER_DRAW_WG
from webllm_py.sampling import Sampler, SamplingParams

pytestmark = pytest.mark.gpu


def run(coro):
    return asyncio.run(coro)


class Rig:
    def __init__(self, device, vocab, tree=None, wg=None):
        self.device, self.vocab = device, vocab
        self.sampler = Sampler(device, vocab, tree=tree, draw_wg=wg)
        self.logits = device.create_buffer(4 * vocab)
        self.op = self.sampler.bind(self.logits)

    def start(self, logits, prompt=(), **params):
        self.device.write_buffer(self.logits, np.asarray(logits, np.float32))
        self.sampler.set_params(SamplingParams(**params))
        self.sampler.reset(list(prompt))

    def sample(self, logits=None):
        if logits is not None:
            self.device.write_buffer(self.logits, np.asarray(logits, np.float32))
        with self.device.recorder() as rec:
            self.op.record(rec)
        return run(self.sampler.read())

    def draws(self, n, batch=1000):
        """n draws on unchanged logits, recorded back to back; each token id copied aside."""
        d = self.device
        ids = d.create_buffer(4 * n)
        for b0 in range(0, n, batch):
            with d.recorder() as rec:
                for i in range(b0, min(n, b0 + batch)):
                    self.op.record(rec)
                    rec.copy_buffer(self.sampler.result, 0, ids, 4 * i, 4)
        return np.frombuffer(run(d.read_buffer(ids)), np.uint32)


def log_softmax(x):
    x = np.asarray(x, np.float64)
    m = x.max()
    return x - m - np.log(np.exp(x - m).sum())


def hf_target(logits, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0):
    """The distribution HF's warpers (temperature, top-k, top-p, min-p, in that order) sample from."""
    s = np.asarray(logits, np.float64) / temperature
    if top_k:
        kth = np.sort(s)[-top_k]
        s = np.where(s < kth, -np.inf, s)
    if top_p < 1:
        order = np.argsort(s)  # ascending, like HF
        cum = np.cumsum(np.exp(log_softmax(s[order])))
        remove = cum <= 1 - top_p
        remove[-1] = False  # min_tokens_to_keep = 1
        s[order[remove]] = -np.inf
    if min_p:
        p = np.exp(log_softmax(s))
        s = np.where(p < min_p * p.max(), -np.inf, s)
    return np.exp(log_softmax(s))


def chi2_critical(dof, z=3.719):
    """Wilson-Hilferty approximation of the chi-square quantile; z=3.719 is the normal's 1 - 1e-4."""
    a = 2 / (9 * dof)
    return dof * (1 - a + z * math.sqrt(a)) ** 3


# -- greedy and logprobs ---------------------------------------------------------------------------
# tree=True: the GPU variant's tree reductions; None: the adapter's default (serial on lavapipe);
# wg: the draw's workgroup (SWIFTSHADER_DRAW_WG: SwiftShader's).
@pytest.mark.parametrize(
    "vocab,tree,wg",
    [
        (1000, None, None),
        (49152, None, None),
        (262144, None, None),
        (49152, True, None),
        (49152, None, SWIFTSHADER_DRAW_WG),
    ],
)
def test_greedy_is_argmax_and_logprobs_are_log_softmax(device, vocab, tree, wg):
    rng = np.random.default_rng(vocab)
    rig = Rig(device, vocab, tree, wg)
    for trial in range(3):
        x = (rng.standard_normal(vocab) * 3).astype(np.float32)
        rig.start(x, temperature=0, logprobs=True, top_logprobs=5)
        r = rig.sample()
        assert r.token_id == int(np.argmax(x))
        ref = log_softmax(x)
        assert r.logprob == pytest.approx(ref[r.token_id], abs=1e-4)
        top = np.argsort(-x, kind="stable")[:5]
        assert [i for i, _ in r.top_logprobs] == top.tolist()
        np.testing.assert_allclose([lp for _, lp in r.top_logprobs], ref[top], atol=1e-4)


@pytest.mark.parametrize("tree", [None, True])
def test_greedy_ties_pick_lowest_id_like_torch(device, tree):
    import torch

    vocab = 5000
    rig = Rig(device, vocab, tree)
    x = np.random.default_rng(3).standard_normal(vocab).astype(np.float32)
    for ties in ([4321, 77, 2500], [4999, 0], [17, 18, 19, 4000]):
        y = x.copy()
        y[ties] = 9.0
        rig.start(y, temperature=0, logprobs=True, top_logprobs=len(ties))
        r = rig.sample()
        assert r.token_id == int(torch.argmax(torch.from_numpy(y))) == min(ties)
        assert [i for i, _ in r.top_logprobs] == sorted(ties)  # equal values listed by id


# -- sampled distributions -------------------------------------------------------------------------
DIST_LOGITS = np.array(
    [2.1, -0.3, 1.4, 0.2, 3.0, -1.7, 0.9, 1.9, -0.8, 0.5, 2.6, -2.4, 1.1, 0.0, -0.5, 1.6], np.float32
)


@pytest.mark.parametrize(
    "params",
    [
        dict(temperature=1.0),
        dict(temperature=0.6),
        dict(temperature=1.5, top_k=5),
        dict(temperature=1.2, top_p=0.7),
        dict(temperature=1.0, min_p=0.15),
        dict(temperature=0.9, top_k=9, top_p=0.85, min_p=0.05),
        dict(temperature=0.9, top_k=9, top_p=0.85, min_p=0.05, tree=True),
        dict(temperature=0.9, top_k=9, top_p=0.85, min_p=0.05, wg=SWIFTSHADER_DRAW_WG),
    ],
)
def test_sampled_distribution_matches_hf_warpers(device, params):
    n = 5000
    params = dict(params)
    rig = Rig(device, 16, params.pop("tree", None), params.pop("wg", None))
    rig.start(DIST_LOGITS, seed=1234, **params)
    ids = rig.draws(n)
    freq = np.bincount(ids, minlength=16) / n
    target = hf_target(DIST_LOGITS, **params)
    assert np.all(freq[target == 0] == 0), "drew a token the warpers exclude"
    keep = target > 0
    chi2 = float(((freq[keep] - target[keep]) ** 2 / target[keep]).sum() * n)
    dof = int(keep.sum()) - 1
    if dof > 0:
        assert chi2 < chi2_critical(dof), (chi2, freq.round(3), target.round(3))
    assert 0.5 * np.abs(freq - target).sum() < 0.03


def test_seed_reproducible_and_seeds_differ(device):
    rig = Rig(device, 16)
    flat = np.zeros(16, np.float32)

    def tokens(seed):
        rig.start(flat, seed=seed, temperature=1.0)
        return [rig.sample().token_id for _ in range(24)]

    a, b, c = tokens(7), tokens(7), tokens(8)
    assert a == b
    assert a != c
    assert len(set(a)) > 4  # and the stream is not stuck


def test_top_k_large_vocab_draws_only_from_top_k(device):
    vocab = 262144
    rng = np.random.default_rng(5)
    x = rng.standard_normal(vocab).astype(np.float32)
    top3 = set(np.argsort(-x)[:3].tolist())
    rig = Rig(device, vocab)
    rig.start(x, seed=1, temperature=5.0, top_k=3)
    got = {rig.sample().token_id for _ in range(12)}
    assert got <= top3 and len(got) > 1
    rig.start(x, seed=1, temperature=1.0, top_k=1)
    assert rig.sample().token_id == int(np.argmax(x))


# -- penalties and bias ----------------------------------------------------------------------------
def reference_processed(logits, prompt, generated, rep, freq, pres, bias):
    """HF repetition penalty over prompt + output, then OpenAI's frequency/presence penalties over
    the output, then logit_bias."""
    z = np.asarray(logits, np.float64).copy()
    seen = sorted(set(prompt) | set(generated))
    z[seen] = np.where(z[seen] < 0, z[seen] * rep, z[seen] / rep)
    counts = np.bincount(np.asarray(generated, np.int64), minlength=len(z)).astype(np.float64)
    z -= counts * freq + (counts > 0) * pres
    for t, b in bias.items():
        z[t] += b
    return z


@pytest.mark.parametrize(
    "rep,freq,pres,tree",
    [
        (1.3, 0.0, 0.0, None),
        (1.0, 0.7, 0.4, None),
        (0.8, -0.5, 1.5, None),
        (1.25, 0.3, -0.2, None),
        (1.25, 0.3, -0.2, True),
    ],
)
def test_penalties_and_bias_match_reference(device, rep, freq, pres, tree):
    vocab = 64
    rng = np.random.default_rng(int(rep * 100 + freq * 10))
    prompt = [3, 3, 10, 41, 63, 0]
    bias = {5: 2.5, 10: -1.0, 40: 0.75}
    rig = Rig(device, vocab, tree)
    rig.start(
        np.zeros(vocab),
        prompt=prompt,
        temperature=0,
        repetition_penalty=rep,
        frequency_penalty=freq,
        presence_penalty=pres,
        logit_bias=bias,
        logprobs=True,
        top_logprobs=20,
    )
    generated = []
    for step in range(12):
        # Logits favour already-seen tokens so the penalties decide the ranking.
        x = rng.standard_normal(vocab).astype(np.float32)
        x[prompt + generated] += 1.5
        r = rig.sample(x)
        z = reference_processed(x, prompt, generated, rep, freq, pres, bias)
        ref = log_softmax(z)
        assert r.token_id == int(np.argmax(z)), step
        assert r.logprob == pytest.approx(ref[r.token_id], abs=1e-4)
        top = np.argsort(-z, kind="stable")[:20]
        assert [i for i, _ in r.top_logprobs] == top.tolist()
        np.testing.assert_allclose([lp for _, lp in r.top_logprobs], ref[top], atol=1e-4)
        generated.append(r.token_id)
    assert len(set(generated)) < len(generated) or freq or pres  # counts really accumulated


def test_reset_clears_counts(device):
    rig = Rig(device, 8)
    x = np.array([0, 0, 5, 0, 0, 0, 0, 0], np.float32)
    rig.start(x, temperature=0, presence_penalty=2.0, frequency_penalty=2.0)
    assert [rig.sample().token_id for _ in range(2)] == [2, 2]  # 5, then 5 - 2 - 2 > 0: still the best
    assert rig.sample().token_id == 0  # 5 - 2*2 - 2 < 0: ties at 0, lowest id
    rig.sampler.reset([])
    assert rig.sample().token_id == 2


def test_bias_can_ban_and_force(device):
    rig = Rig(device, 32)
    x = np.linspace(0, 1, 32).astype(np.float32)
    rig.start(x, temperature=0, logit_bias={31: -100})
    assert rig.sample().token_id == 30
    rig.start(x, seed=3, temperature=1.0, logit_bias={4: 100})
    assert {rig.sample().token_id for _ in range(10)} == {4}
    rig.start(x, temperature=0)  # bias of the last request is gone
    assert rig.sample().token_id == 31


# -- validation ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kw,msg",
    [
        (dict(top_p=0.0), r"top_p must be in \(0, 1\]"),
        (dict(top_p=1.5), r"top_p must be in \(0, 1\]"),
        (dict(temperature=-1), "temperature must be >= 0"),
        (dict(top_k=2.5), "top_k must be an integer"),
        (dict(min_p=2), r"min_p must be in \[0, 1\]"),
        (dict(repetition_penalty=0), "repetition_penalty must be > 0"),
        (dict(frequency_penalty=3), r"frequency_penalty must be in \[-2, 2\]"),
        (dict(presence_penalty=float("nan")), "presence_penalty must be a finite number"),
        (dict(logit_bias={"x": 1}), "logit_bias keys must be token ids"),
        # int() took these as token 1; a negative id said "outside the vocabulary [0, None)"
        (dict(logit_bias={1.5: 1}), r"logit_bias keys must be token ids \(integers\), got 1.5"),
        (dict(logit_bias={True: 1}), "logit_bias keys must be token ids"),
        (dict(logit_bias={-1: 1}), r"token id -1 is outside the vocabulary \(ids are >= 0\)\.$"),
        (dict(logit_bias={3: 101}), r"logit_bias values must be in \[-100, 100\]"),
        (dict(top_logprobs=3), "top_logprobs needs logprobs=True"),
        (dict(logprobs=True, top_logprobs=21), r"top_logprobs must be an integer in \[0, 20\]"),
        (dict(seed="abc"), "seed must be an integer"),
    ],
)
def test_validation_messages(kw, msg):
    with pytest.raises(RequestError, match=msg):
        SamplingParams(**kw)


def test_bias_keys_as_ints_strings_and_numpy_ints_are_taken():
    for key in (3, "3", np.int64(3)):
        assert SamplingParams(logit_bias={key: 1.0}).logit_bias == {key: 1.0}


def test_bias_token_outside_vocab_is_refused(device):
    s = Sampler(device, 100)
    with pytest.raises(RequestError, match=r"outside the vocabulary \[0, 100\)"):
        s.set_params(SamplingParams(logit_bias={100: 1.0}))


@pytest.mark.parametrize(
    "kw, want",
    [
        # A top_p below f32's range became 0.0 on the GPU: no token survived, and an id past the
        # vocabulary came back (IndexError in the tokenizer). Any top_p below the top token's probability
        # keeps that token alone (HF's min_tokens_to_keep=1): the argmax.
        (dict(top_p=1e-300, temperature=1.0), "argmax"),
        (dict(top_p=1e-46, temperature=1.0), "argmax"),
        # Beyond f32's range: struct.error / OverflowError when packed. top_k >= vocab keeps every token;
        # a temperature of 1e300 flattens the distribution (any token); a penalty of 1e300 is legal.
        (dict(top_k=2**40, temperature=1.0, seed=3), dict(top_k=0, temperature=1.0, seed=3)),
        (dict(temperature=1e300, seed=3), "any"),
        (dict(temperature=0, repetition_penalty=1e300), "any"),
    ],
    ids=repr,
)
def test_parameters_beyond_f32_are_taken_by_their_limit(device, kw, want):
    rig = Rig(device, 64)
    logits = np.random.default_rng(0).standard_normal(64).astype(np.float32)
    rig.start(logits, **kw)
    got = [rig.sample().token_id for _ in range(4)]
    assert all(0 <= t < 64 for t in got), got
    if want == "argmax":
        assert got == [int(np.argmax(logits))] * 4
    elif isinstance(want, dict):
        rig.start(logits, **want)
        assert got == [rig.sample().token_id for _ in range(4)]


@pytest.mark.parametrize("temperature", [1e-45, 1e-39, 1e-37, 1e-31])
def test_a_temperature_near_zero_is_greedy(device, temperature):
    """A subnormal temperature (0 on the GPU), or one whose 1 / temperature times logits of a real model's
    size (~40) overflows f32, drew token 0 every step (SmolLM2 at 1e-38: its EOS, an empty reply). The
    limit of a temperature -> 0 is the argmax."""
    rig = Rig(device, 64)
    logits = (np.random.default_rng(1).standard_normal(64) * 5 + 30).astype(np.float32)
    assert int(np.argmax(logits)) != 0
    rig.start(logits, temperature=temperature, seed=3)
    assert [rig.sample().token_id for _ in range(4)] == [int(np.argmax(logits))] * 4


@pytest.mark.parametrize("bad", [np.nan, -np.inf], ids=str)  # all +inf: a tie, the lowest id (torch.argmax)
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_logits_that_are_not_finite_are_a_model_format_error(device, bad, temperature):
    """A model whose logits are all NaN/inf (corrupt or hostile weights) drew an id past the vocabulary,
    which ended in an IndexError in the tokenizer; now the sampler says what happened, and stays usable."""
    from webllm_py.errors import ModelFormatError

    rig = Rig(device, 64)
    rig.start(np.full(64, bad, np.float32), temperature=temperature, seed=1)
    with pytest.raises(ModelFormatError, match="not finite"):
        rig.sample()
    logits = np.arange(64, dtype=np.float32)
    rig.start(logits, temperature=0)
    assert rig.sample().token_id == 63
