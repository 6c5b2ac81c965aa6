"""An incremental recogniser for a Grammar, one byte at a time: a pushdown automaton over a set of stacks.

A stack is a tuple of positions (alternative, index) — where to continue in each rule entered so far,
innermost last. Normalising a stack expands rule references at its top until the top is a terminal
(a byte or a character element) or the stack is empty (the root rule is complete). A matcher state is
the set of all stacks the input so far can be in (the grammar may be ambiguous), so it is exactly what
the rest of the input may be; a byte advances every stack whose top accepts it.

A character element that needs more than one UTF-8 byte leaves a partial position
(alternative, index, code point so far, bytes still needed) on top until its last byte arrives: a token
that ends in the middle of a character is matched as far as it goes.

States are interned (`State` objects, one per distinct stack set) and remember their transitions, so a
byte seen before from a state costs one dict lookup — what the token-mask walk relies on. Left
recursion (a rule that reaches itself before consuming anything) is rejected with GrammarError.
"""

from __future__ import annotations

from .grammar import Grammar, GrammarError

_MAX_EXPAND_DEPTH = 400


class State:
    """One interned matcher state. `accepting`: the input so far is a complete sentence; `complete`:
    accepting and nothing may follow (generation stops here)."""

    __slots__ = ("stacks", "accepting", "complete", "trans", "mask", "run", "id")

    def __init__(self, stacks: frozenset, id: int):
        self.stacks = stacks
        self.accepting = () in stacks
        self.complete = stacks == frozenset([()])
        self.trans: dict = {}  # byte -> State | None
        self.mask = None  # token mask bytes, filled by token_mask
        self.run = None  # (byte bitset, capacity, how it ends, in characters), filled by token_mask
        self.id = id


class Matcher:
    """The recogniser of one Grammar: `initial`, `step(state, byte)`, `feed(state, data)`."""

    def __init__(self, grammar: Grammar):
        self.grammar = grammar
        # Alternatives numbered globally; rule_alts[r] = their numbers.
        self.alts: list[tuple] = []
        self.rule_alts: list[list[int]] = []
        for alts in grammar.rules:
            ids = []
            for a in alts:
                ids.append(len(self.alts))
                self.alts.append(a)
            self.rule_alts.append(ids)
        self._states: dict[frozenset, State] = {}
        self.first_masks: dict[int, bytes] = {}  # masks of a first token whose leading space is dropped
        self._expanded: dict[tuple, tuple] = {}
        self._active: set = set()  # stacks being expanded right now (a cycle through empty matches)
        self._cut = False  # a cycle was cut: results below the cycle's start are partial
        self.initial = self._intern(self._expand_all([((a, 0),) for a in self.rule_alts[0]]))

    # -- states ---------------------------------------------------------------------------------------
    def _intern(self, stacks: set) -> State | None:
        if not stacks:
            return None
        key = frozenset(stacks)
        st = self._states.get(key)
        if st is None:
            st = self._states[key] = State(key, len(self._states))
        return st

    @property
    def n_states(self) -> int:
        return len(self._states)

    def _expand_all(self, stacks) -> set:
        out: set = set()
        for s in stacks:
            out.update(self._expand(s))
        return out

    def _expand(self, stack: tuple, depth: int = 0) -> tuple:
        """Normalised stacks of `stack`: top is a terminal (or a partial character), or the stack is empty."""
        got = self._expanded.get(stack)
        if got is not None:
            return got
        if depth > _MAX_EXPAND_DEPTH:
            raise GrammarError(
                f"grammar is left-recursive (a rule reaches itself before matching any character), or more than "
                f"{_MAX_EXPAND_DEPTH} rules deep before one (e.g. an object of that many optional properties)"
            )
        if stack in self._active:
            # Back at a stack being expanded without consuming input ((x?)* and the like): that path
            # adds nothing the outer expansion does not already produce.
            self._cut = True
            return ()
        outer_cut, self._cut = self._cut, False
        self._active.add(stack)
        out: list = []
        if not stack:
            out.append(stack)
        else:
            top = stack[-1]
            if len(top) == 4:  # partial character: already a terminal
                out.append(stack)
            else:
                a, i = top
                alt = self.alts[a]
                if i == len(alt):  # this alternative is done: continue in the rule below
                    out.extend(self._expand(stack[:-1], depth + 1))
                else:
                    el = alt[i]
                    if el[0] == "ref":
                        rest = stack[:-1] + ((a, i + 1),) if i + 1 < len(alt) else stack[:-1]
                        for b in self.rule_alts[el[1]]:
                            out.extend(self._expand(rest + ((b, 0),), depth + 1))
                    else:
                        out.append(stack)
        self._active.discard(stack)
        got = tuple(dict.fromkeys(out))
        if not self._cut or depth == 0:  # a partial result (inside a cut cycle) is not remembered
            self._expanded[stack] = got
        self._cut = self._cut or outer_cut
        return got

    # -- input ----------------------------------------------------------------------------------------
    def step(self, state: State, byte: int) -> State | None:
        """The state after `byte`, or None if the grammar rejects it. Memoised per state."""
        nxt = state.trans.get(byte, _MISSING)
        if nxt is not _MISSING:
            return nxt
        out: set = set()
        for stack in state.stacks:
            if not stack:
                continue
            top = stack[-1]
            if len(top) == 4:  # continuation byte of a partial character
                a, i, cp, need = top
                if not 0x80 <= byte <= 0xBF:
                    continue
                second = _SECOND.get((cp, need))  # just after a lead byte whose next byte is narrower
                if second is not None and not second[0] <= byte <= second[1]:
                    continue
                if need > 1:
                    part = _partial(self.alts[a][i], a, i, cp if cp == _ANY else (cp << 6) | (byte & 0x3F), need - 1)
                    if part is not None:
                        out.add(stack[:-1] + (part,))
                elif cp == _ANY or _in_class(self.alts[a][i], (cp << 6) | (byte & 0x3F)):
                    out.update(self._expand(stack[:-1] + ((a, i + 1),)))
                continue
            a, i = top
            el = self.alts[a][i]
            if el[0] == "byte":
                if el[1] >> byte & 1:
                    out.update(self._expand(stack[:-1] + ((a, i + 1),)))
            elif byte < 0x80:
                if _in_class(el, byte):
                    out.update(self._expand(stack[:-1] + ((a, i + 1),)))
            elif 0xC2 <= byte <= 0xF4:  # lead byte of a 2-4 byte character (no overlong 0xC0/0xC1)
                need = 1 if byte < 0xE0 else 2 if byte < 0xF0 else 3
                part = el[0] == "char" and _partial(el, a, i, byte & (0x1F, 0x0F, 0x07)[need - 1], need)
                if part:
                    out.add(stack[:-1] + (part,))
        nxt = self._intern(out)
        state.trans[byte] = nxt
        return nxt

    def feed(self, state: State | None, data: bytes) -> State | None:
        for b in data:
            if state is None:
                return None
            state = self.step(state, b)
        return state

    def accepts(self, data: bytes | str) -> bool:
        """Whether `data` is a complete sentence of the grammar."""
        if isinstance(data, str):
            data = data.encode("utf-8")
        st = self.feed(self.initial, data)
        return st is not None and st.accepting

    def is_prefix(self, data: bytes | str) -> bool:
        """Whether `data` can be continued into a sentence of the grammar."""
        if isinstance(data, str):
            data = data.encode("utf-8")
        return self.feed(self.initial, data) is not None


_MISSING = object()


def _in_class(el, cp: int) -> bool:
    if el[0] == "byte":
        return cp < 256 and bool(el[1] >> cp & 1)
    inside = any(lo <= cp <= hi for lo, hi in el[1])
    return inside != el[2]


# A partial character whose every completion is in its class: the code point so far no longer matters,
# so all such partials at one position are one state (else each lead byte and prefix of a multi-byte
# character would make its own state, and a mask walk through a string's non-ASCII tokens would meet
# thousands of new states).
_ANY = -1


def _partial(el, a: int, i: int, cp: int, need: int):
    """The partial-character position for element `el` with code point bits `cp` so far and `need`
    continuation bytes to come: None if no well-formed completion is in the class, cp replaced by _ANY
    if all are (not yet right after E0, ED, F0 or F4, whose next byte is checked against _SECOND)."""
    if cp == _ANY:
        return (a, i, _ANY, need)
    second = _SECOND.get((cp, need))
    if second is None:
        lo = cp << (6 * need)
        hi = lo | ((1 << (6 * need)) - 1)
    else:
        shift = 6 * (need - 1)
        lo = ((cp << 6) | (second[0] & 0x3F)) << shift
        hi = ((cp << 6) | (second[1] & 0x3F)) << shift | ((1 << shift) - 1)
    inside = _coverage(el[1], el[2], lo, hi)
    if inside is False:
        return None
    return (a, i, _ANY, need) if inside and second is None else (a, i, cp, need)


# Well-formed UTF-8 (Unicode's table 3-7) narrows the byte after four lead bytes: E0 (no overlong
# 3-byte forms), ED (no surrogates), F0 (no overlong 4-byte forms), F4 (nothing past U+10FFFF). Keyed
# by (code point bits, continuation bytes to come) as a partial holds them right after that lead,
# a pair no other prefix reaches once these limits hold.
_SECOND = {(0x0, 2): (0xA0, 0xBF), (0xD, 2): (0x80, 0x9F), (0x0, 3): (0x90, 0xBF), (0x4, 3): (0x80, 0x8F)}


def _coverage(ranges: tuple, negated: bool, lo: int, hi: int) -> bool | None:
    """Whether every code point of [lo, hi] is in the class (True), none is (False), or some are (None)."""
    key = (ranges, negated, lo, hi)
    got = _COVERAGE.get(key, _MISSING)
    if got is _MISSING:
        covered, start = 0, lo  # size of [lo, hi] & union(ranges), ranges merged as we go
        for r_lo, r_hi in sorted(ranges):
            r_lo, r_hi = max(r_lo, start), min(r_hi, hi)
            if r_lo <= r_hi:
                covered += r_hi - r_lo + 1
                start = r_hi + 1
        if negated:
            covered = hi - lo + 1 - covered
        got = _COVERAGE[key] = True if covered == hi - lo + 1 else False if covered == 0 else None
    return got


_COVERAGE: dict = {}
