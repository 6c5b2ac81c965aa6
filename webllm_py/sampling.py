"""Token sampling on the GPU: logit bias, penalties, temperature, top-k, top-p, min-p and a seeded
draw, in two dispatches (shaders/sampling_logits, shaders/sampling_draw). Only the chosen token,
its logprob and (if asked) the top logprobs come back to the host: a handful of bytes per token.

Semantics, so results can be compared with the usual references:
- repetition_penalty as Hugging Face's RepetitionPenaltyLogitsProcessor, over prompt + output tokens:
  a seen token's logit is divided by the penalty when positive, multiplied when negative;
- frequency_penalty / presence_penalty as OpenAI defines them, over output tokens:
  logit -= count * frequency_penalty + (count > 0) * presence_penalty;
- logit_bias added last (values in [-100, 100], OpenAI's range);
- an allowed-token mask (structured output, `set_mask`) then sets every other token's logit to -inf;
- temperature 0 is greedy (ties -> lowest id, like torch.argmax); otherwise temperature, then
  top-k, top-p, min-p in Hugging Face's order, then a draw;
- logprobs are log-softmax of the processed logits (after penalties and bias, before temperature
  and truncation); equal to the model's own log-probabilities when no penalty or bias is set.
"""

from __future__ import annotations

import math
import operator
import random
import re
import struct
from dataclasses import dataclass, field

from .errors import ModelFormatError, RequestError
from .gpu.base import BindGroup, Buffer, Device, Recorder
from .planner import Adapter, sampling_draw_wg

MAX_TOP_LOGPROBS = 20
F32_MAX = 3.4028234663852886e38  # the largest finite f32: params are packed as f32 for the kernels
F32_TINY = 2.0**-126  # the smallest normal f32
# Temperatures below this are greedy (their limit): the draw kernel scales z by 1 / temperature, which for
# a subnormal temperature (flushed to 0 on the GPU) or z * (1 / temperature) past f32's range is inf or NaN,
# and the draw then picked token 0. At 1e-30 any |z| < 3e8 stays finite, and z's a ulp apart already
# differ by far more than the draw's noise: the same tokens as greedy.
GREEDY_BELOW = 1e-30
_TOKEN_ID = re.compile(r"-?[0-9]+")  # a logit_bias key as JSON carries it (ASCII digits only)
_PARAM_WORDS = 16
_RESULT_WORDS = 4 + 2 * MAX_TOP_LOGPROBS
_PROMPT_BIT = 1 << 31  # counts[i]: bit 31 = token in the prompt, bits 0-30 = times generated


@dataclass
class SamplingParams:
    temperature: float = 1.0
    top_k: int = 0  # 0 (or -1): off
    top_p: float = 1.0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    logit_bias: dict[int, float] = field(default_factory=dict)
    seed: int | None = None
    logprobs: bool = False
    top_logprobs: int = 0

    def __post_init__(self) -> None:
        self.validate()

    def validate(self, vocab_size: int | None = None) -> "SamplingParams":
        """Raise RequestError naming the first bad parameter and its valid range."""

        def num(name: str) -> float:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise RequestError(f"{name} must be a finite number, got {v!r}.")
            return float(v)

        if num("temperature") < 0:
            raise RequestError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}.")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < -1:
            raise RequestError(f"top_k must be an integer >= 0 (0 or -1 = off), got {self.top_k!r}.")
        if not 0 < num("top_p") <= 1:
            raise RequestError(f"top_p must be in (0, 1], got {self.top_p}.")
        if not 0 <= num("min_p") <= 1:
            raise RequestError(f"min_p must be in [0, 1], got {self.min_p}.")
        if num("repetition_penalty") <= 0:
            raise RequestError(f"repetition_penalty must be > 0 (1 = off), got {self.repetition_penalty}.")
        for name in ("frequency_penalty", "presence_penalty"):
            if not -2 <= num(name) <= 2:
                raise RequestError(f"{name} must be in [-2, 2], got {getattr(self, name)}.")
        if not isinstance(self.logit_bias, dict):
            raise RequestError("logit_bias must be a mapping of token id -> bias.")
        for tok, bias in self.logit_bias.items():
            try:
                # JSON object keys arrive as strings; otherwise an int (numpy's too), not a float or a bool,
                # which int() would take: 1.5 or True was a bias on token 1.
                # A string key is ASCII digits alone: int() also took " 5 ", "+5" and other scripts' digits ("٥").
                if isinstance(tok, bool) or isinstance(tok, str) and not _TOKEN_ID.fullmatch(tok):
                    raise TypeError
                tid = int(tok) if isinstance(tok, str) else operator.index(tok)
            except (TypeError, ValueError):
                raise RequestError(f"logit_bias keys must be token ids (integers), got {tok!r}.") from None
            if tid < 0 or (vocab_size is not None and tid >= vocab_size):
                where = f"[0, {vocab_size})" if vocab_size is not None else "(ids are >= 0)"
                raise RequestError(f"logit_bias token id {tid} is outside the vocabulary {where}.")
            if isinstance(bias, bool) or not isinstance(bias, (int, float)) or not -100 <= bias <= 100:
                raise RequestError(f"logit_bias values must be in [-100, 100], got {bias!r} for token {tid}.")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)):
            raise RequestError(f"seed must be an integer or None, got {self.seed!r}.")
        if not isinstance(self.logprobs, bool):  # OpenAI's legacy completions took logprobs=N for the top N
            raise RequestError(
                f"logprobs must be true or false, got {self.logprobs!r} (the N most likely tokens: top_logprobs=N)."
            )
        if (
            isinstance(self.top_logprobs, bool)
            or not isinstance(self.top_logprobs, int)
            or not 0 <= self.top_logprobs <= MAX_TOP_LOGPROBS
        ):
            raise RequestError(
                f"top_logprobs must be an integer in [0, {MAX_TOP_LOGPROBS}], got {self.top_logprobs!r}."
            )
        if self.top_logprobs and not self.logprobs:
            raise RequestError("top_logprobs needs logprobs=True.")
        return self


@dataclass
class SampleResult:
    token_id: int
    logprob: float
    top_logprobs: list[tuple[int, float]] = field(default_factory=list)


class Sampler:
    """GPU sampler for one vocabulary. Per request: `set_params`, `reset(prompt_ids)`; per token:
    `BoundSampler.record(rec)` after the logits are recorded, then `await read()`."""

    def __init__(
        self,
        device: Device,
        vocab_size: int,
        per_thread: int = 16,
        logits_wg: int = 64,
        draw_wg: int | None = None,
        iters: int = 24,
        cut: float = 30.0,
        tree: bool | None = None,
    ) -> None:
        self.device, self.vocab_size = device, vocab_size
        V = vocab_size
        self.n_partials = -(-V // per_thread)
        self.logits_wg = logits_wg
        self.k_logits = device.kernel(
            "sampling_logits", label="sampling_logits", vocab=V, threads=self.n_partials, wg=logits_wg
        )
        self.k_draw = device.kernel(
            "sampling_draw",
            label="sampling_draw",
            vocab=V,
            partials=self.n_partials,
            wg=sampling_draw_wg(Adapter.of(device)) if draw_wg is None else draw_wg,
            iters=iters,
            cut=repr(float(cut)),
            # CPU adapters pay per barrier: serial reductions there, trees on GPUs.
            tree=(not device.info.is_fallback) if tree is None else tree,
        )
        self.params_buf = device.create_buffer(4 * _PARAM_WORDS, "sampling.params")
        self.counts = device.create_buffer(4 * V, "sampling.counts")
        self.bias = device.create_buffer(4 * V, "sampling.bias")
        self.z = device.create_buffer(4 * V, "sampling.z")
        self.partials = device.create_buffer(12 * self.n_partials, "sampling.partials")
        self.cand = device.create_buffer(12 * V, "sampling.cand")
        self.result = device.create_buffer(4 * _RESULT_WORDS, "sampling.result")
        self.mask_words = -(-V // 32)
        self.mask = device.create_buffer(4 * self.mask_words, "sampling.mask")
        self._use_mask = False
        self._last_mask = None
        self.params = SamplingParams()
        self._bias_dirty = False
        self.set_params(self.params)
        self.reset(())

    def bind(self, logits: Buffer) -> "BoundSampler":
        d = self.device
        return BoundSampler(
            self,
            d.bind(self.k_logits, [logits, self.z, self.partials, self.params_buf, self.counts, self.bias, self.mask]),
            d.bind(self.k_draw, [self.z, self.partials, self.params_buf, self.counts, self.cand, self.result]),
        )

    def set_params(self, params: SamplingParams) -> None:
        params.validate(self.vocab_size)
        self.params = params
        seed = params.seed if params.seed is not None else random.getrandbits(64)
        seed &= (1 << 64) - 1
        # Into f32 / u32 by their limits (the same draws): top_k past the vocabulary keeps every token; a
        # top_p under f32's range would be 0 (no token kept), one below the top token's probability keeps
        # that token alone; temperatures and penalties past f32's range act as its largest value.
        temperature = 0.0 if params.temperature < GREEDY_BELOW else min(params.temperature, F32_MAX)
        top_k = min(params.top_k, self.vocab_size) if params.top_k > 0 else 0
        words = struct.pack(
            "<fIffffffIIII",
            temperature,
            top_k,
            max(params.top_p, F32_TINY),
            params.min_p,
            min(max(params.repetition_penalty, F32_TINY), F32_MAX),
            params.frequency_penalty,
            params.presence_penalty,
            0.0,
            0,
            0,
            0,
            0,
        )
        words = bytearray(words + b"\0" * (4 * _PARAM_WORDS - len(words)))
        # Seed as two words (P_SEED_LO = 7, P_SEED_HI = 8), then P_USE_BIAS = 9, P_TOP_LOGPROBS = 10.
        struct.pack_into(
            "<IIII",
            words,
            28,
            seed & 0xFFFFFFFF,
            seed >> 32,
            1 if params.logit_bias else 0,
            params.top_logprobs if params.logprobs else 0,
        )
        self._use_mask = False  # P_USE_MASK = 11 stays 0 until set_mask
        self.device.write_buffer(self.params_buf, bytes(words))
        if params.logit_bias or self._bias_dirty:
            dense = bytearray(4 * self.vocab_size)  # zeros are f32 0.0
            for tok, b in params.logit_bias.items():
                struct.pack_into("<f", dense, 4 * int(tok), float(b))
            self.device.write_buffer(self.bias, bytes(dense))
            self._bias_dirty = bool(params.logit_bias)

    def set_mask(self, mask: bytes | None) -> None:
        """Allow only the tokens whose bits are set in `mask` (ceil(vocab/32) little-endian u32 words,
        bit t%32 of word t//32 = token t) for the next draws; None lifts the constraint."""
        if mask is None:
            if self._use_mask:
                self.device.write_buffer(self.params_buf, struct.pack("<I", 0), 44)
                self._use_mask = False
            return
        if len(mask) != 4 * self.mask_words:
            raise RequestError(f"token mask has {len(mask)} bytes, expected {4 * self.mask_words}")
        if not (self._use_mask and mask is self._last_mask):  # masks are cached per state: same object, same bits
            self.device.write_buffer(self.mask, mask)
            self._last_mask = mask
        if not self._use_mask:
            self.device.write_buffer(self.params_buf, struct.pack("<I", 1), 44)
            self._use_mask = True

    def reset(self, prompt_ids=()) -> None:
        """Start a request: forget generated-token counts, mark the prompt's tokens as seen (for the
        repetition penalty) and restart the RNG counter."""
        counts = bytearray(4 * self.vocab_size)
        for tid in set(prompt_ids):
            if 0 <= tid < self.vocab_size:
                counts[4 * tid + 3] = 0x80  # little-endian u32: bit 31 lives in the last byte
        self.device.write_buffer(self.counts, bytes(counts))
        self.device.write_buffer(self.result, bytes(4 * _RESULT_WORDS))

    @property
    def result_size(self) -> int:
        """Bytes of `result` a read needs: the id, its logprob, the count and the top logprobs asked for."""
        return 4 * (4 + 2 * (self.params.top_logprobs if self.params.logprobs else 0))

    def parse(self, raw: bytes) -> SampleResult:
        """A SampleResult from `result`'s first result_size bytes (read here, or copied elsewhere by a step)."""
        n_top = self.params.top_logprobs if self.params.logprobs else 0
        tid, logprob, n = struct.unpack_from("<IfI", raw)
        if tid >= self.vocab_size:  # the draw kept no token: every logit was NaN or +-inf
            raise ModelFormatError(
                "the model's logits are not finite (NaN or infinite), so no token could be drawn: its weights "
                "are corrupt or overflow. Load another copy of the model (or report it if it loads elsewhere)."
            )
        tops = [struct.unpack_from("<If", raw, 16 + 8 * r) for r in range(min(n, n_top))]
        return SampleResult(tid, logprob, [(i, lp) for i, lp in tops])

    async def read(self) -> SampleResult:
        return self.parse(await self.device.read_buffer(self.result, 0, self.result_size))


@dataclass(eq=False)
class BoundSampler:
    """The sampler bound to a model's logits: two dispatches after the step's last token."""

    sampler: Sampler
    logits_pass: BindGroup
    draw_pass: BindGroup

    def record(self, rec: Recorder, n_tokens: int = 1) -> None:
        """(Recordable: the sampler reads one token's logits whatever the step's size.)"""
        s = self.sampler
        rec.dispatch(self.logits_pass, -(-s.n_partials // s.logits_wg))
        rec.dispatch(self.draw_pass, 1)

    async def read(self) -> SampleResult:
        return await self.sampler.read()
