"""GBNF grammars and the byte-level matcher, against Python's `re` as the independent reference:
random regular grammars are written both as GBNF and as a regular expression, and random strings
(ASCII and multi-byte characters) must be accepted exactly when `re.fullmatch` matches; every prefix
of an accepted string must be a live prefix. Plus parse errors (line/column), left recursion,
recursive (non-regular) rules and byte-at-a-time UTF-8."""

from __future__ import annotations

import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from webllm_py.errors import RequestError
from webllm_py.structured.grammar import Grammar, GrammarError, gbnf_literal
from webllm_py.structured.matcher import Matcher

ALPHABET = "ab-é€😀"


def _cls(chars: list[str], negated: bool):
    body = "".join("\\-" if c == "-" else c for c in chars)
    return (f"[{'^' if negated else ''}{body}]", f"[{'^' if negated else ''}{re.escape(''.join(chars))}]")


def expr(depth: int = 3):
    """(gbnf, regex) pairs for the same language."""
    lit = st.text(alphabet=ALPHABET, min_size=1, max_size=3).map(lambda s: (gbnf_literal(s), re.escape(s)))
    cls = st.builds(_cls, st.lists(st.sampled_from(ALPHABET), min_size=1, max_size=3, unique=True), st.booleans())
    dot = st.just((".", "."))
    leaf = st.one_of(lit, cls, dot)

    def extend(inner):
        seq = st.lists(inner, min_size=1, max_size=3).map(
            lambda xs: (" ".join(g for g, _ in xs), "".join(f"(?:{r})" for _, r in xs))
        )
        alt = st.lists(inner, min_size=2, max_size=3).map(
            lambda xs: ("(" + " | ".join(g for g, _ in xs) + ")", "(?:" + "|".join(r for _, r in xs) + ")")
        )
        rep = st.tuples(inner, st.sampled_from(["*", "+", "?", "{2}", "{1,3}", "{0,2}", "{2,}"])).map(
            lambda p: (f"({p[0][0]}){p[1]}", f"(?:{p[0][1]}){p[1]}")
        )
        return st.one_of(seq, alt, rep)

    return st.recursive(leaf, extend, max_leaves=6)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(expr(), st.lists(st.text(alphabet=ALPHABET, max_size=6), min_size=6, max_size=12))
def test_matches_python_re(pair, samples):
    gbnf, regex = pair
    m = Matcher(Grammar.from_gbnf(f"root ::= {gbnf}\n"))
    rx = re.compile(regex, re.DOTALL)
    for s in samples:
        assert m.accepts(s) == (rx.fullmatch(s) is not None), (gbnf, regex, s)
        if rx.fullmatch(s):
            data = s.encode()
            for k in range(len(data) + 1):  # every byte prefix, also mid-character, is live
                assert m.is_prefix(data[:k])


def test_recursive_rules_and_comments():
    g = """# balanced brackets, a non-regular language
root ::= pair+   # one or more
pair ::= "(" pair* ")"
   | "[" pair* "]"
"""
    m = Matcher(Grammar.from_gbnf(g))
    assert m.accepts("()[()]") and m.accepts("([[]])")
    assert not m.accepts("(]") and not m.accepts("((") and not m.accepts("")
    assert m.is_prefix("(([")
    st_ = m.feed(m.initial, b"()")
    assert st_.accepting and not st_.complete


def test_utf8_character_split_across_steps():
    m = Matcher(Grammar.from_gbnf('root ::= [^a] "!"'))
    euro = "€".encode()
    s = m.initial
    for b in euro:
        s = m.step(s, b)
        assert s is not None and not s.accepting
    assert m.step(s, ord("!")).complete
    assert m.step(m.initial, 0x80) is None  # a continuation byte cannot start a character
    assert m.feed(m.initial, b"\xe2\x82!") is None  # an unfinished character cannot be cut short


def test_escapes():
    m = Matcher(Grammar.from_gbnf(r'root ::= "\x41\u00e9\n" [\x30-\x39]{2} "\""'))
    assert m.accepts('Aé\n42"')


@pytest.mark.parametrize(
    "text, where",
    [
        ('root ::= "a', "unterminated string"),
        ("root ::= [a-", "unterminated character class"),
        ('root ::= ( "a"', "expected ')'"),
        ('root ::= "a"\nroot ::= "b"', "defined twice"),
        ("root ::= x", "not defined"),
        ('start ::= "a"', "root"),
        ('root ::= "a"{3,1}', "max < min"),
        ("root ::= [z-a]", "empty range"),
    ],
)
def test_parse_errors(text, where):
    with pytest.raises(GrammarError, match=re.escape(where)):
        Matcher(Grammar.from_gbnf(text))
    assert issubclass(GrammarError, RequestError)


@pytest.mark.parametrize(
    "text",
    [
        'root ::= "a"{1000000000}',  # took minutes and gigabytes to expand
        'root ::= (("a"{1000}){1000}){1000}',  # each count small, their product not
        'root ::= "ab"{10,1100000}',  # the optionals' helper rules count too
    ],
)
def test_grammars_too_large_to_expand_are_refused_at_once(text):
    with pytest.raises(GrammarError, match="too large"):
        Grammar.from_gbnf(text)
    assert Matcher(Grammar.from_gbnf('root ::= "a"{1000} "b"{0,1000}')).accepts("a" * 1000 + "b" * 7)


def test_left_recursion_is_an_error():
    with pytest.raises(GrammarError, match="left-recursive"):
        Matcher(Grammar.from_gbnf('root ::= root "a" | "b"'))
