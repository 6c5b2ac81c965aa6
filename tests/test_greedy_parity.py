"""model_checks.assert_greedy_parity, the rule every whole-model greedy comparison uses: a different
token is an error unless transformers' own top-2 gap at that step is within twice the logit tolerance
(a near tie), which is then reported and the comparison continues from transformers' token."""

import pytest

from .model_checks import assert_greedy_parity

REF = [5, 6, 7, 8, 9, 10]
RTOL = 1e-3
WIDE = [0.1] * len(REF)


def engine_flipping(steps: dict[int, int]):
    """A stand-in engine: greedy continuation of the reference, except token `t` at position `i` for
    (i, t) in steps. Like a real engine, after its own deviation it follows its own path (here: junk)."""
    calls = []

    def generate(prompt, n):
        calls.append(len(prompt))
        out = []
        for i in range(len(prompt) - 1, len(prompt) - 1 + n):  # the prompt is [0] + REF[:pos]
            if i in steps:
                return out + [steps[i]] + [-1] * (n - len(out) - 1)
            out.append(REF[i])
        return out

    generate.calls = calls
    return generate


def test_equal_tokens_pass_without_a_second_call():
    gen = engine_flipping({})
    assert assert_greedy_parity(gen, [0], REF, WIDE, RTOL) == []
    assert gen.calls == [1]


def test_a_flip_at_a_near_tie_is_named_and_the_rest_still_compared():
    margins = list(WIDE)
    margins[2] = 1.5e-3  # <= 2 * RTOL
    gen = engine_flipping({2: 99})
    with pytest.warns(UserWarning, match="near tie at greedy step 2: ours 99, transformers' 7"):
        assert assert_greedy_parity(gen, [0], REF, margins, RTOL) == [2]
    assert gen.calls == [1, 4]  # resumed from the prompt + transformers' first 3 tokens


def test_a_flip_with_a_clear_margin_fails():
    margins = list(WIDE)
    margins[2] = 1.5e-3
    with pytest.raises(AssertionError, match="token 3 is 99.*not a near tie"):
        assert_greedy_parity(engine_flipping({3: 99}), [0], REF, margins, RTOL)


def test_a_later_mismatch_after_a_near_tie_still_fails():
    margins = list(WIDE)
    margins[1] = 1e-4

    def gen(prompt, n):  # flips the tie at 1, then, resumed from transformers' token, gets step 4 wrong
        return [REF[0], 99] + [-1] * (n - 2) if len(prompt) == 1 else [REF[2], REF[3], 42, REF[5]][:n]

    with pytest.warns(UserWarning), pytest.raises(AssertionError, match="token 4 is 42"):
        assert_greedy_parity(gen, [0], REF, margins, RTOL)


def test_short_output_fails():
    with pytest.raises(AssertionError):
        assert_greedy_parity(lambda p, n: REF[: n - 1], [0], REF, WIDE, RTOL)
