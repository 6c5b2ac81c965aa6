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
        self.trans: dict = {}   # byte -> State | None
        self.mask = None        # token mask bytes, filled by token_mask
        self.run = None         # (byte bitset, capacity, how it ends), filled by token_mask
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
        self._active: set = set()   # stacks being expanded right now (a cycle through empty matches)
        self._cut = False           # a cycle was cut: results below the cycle's start are partial
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
            raise GrammarError("grammar is left-recursive (a rule reaches itself before matching any "
                               "character)")
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
            if len(top) == 4:          # partial character: already a terminal
                out.append(stack)
            else:
                a, i = top
                alt = self.alts[a]
                if i == len(alt):      # this alternative is done: continue in the rule below
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
            if len(top) == 4:      # continuation byte of a partial character
                a, i, cp, need = top
                if not 0x80 <= byte <= 0xBF:
                    continue
                cp = (cp << 6) | (byte & 0x3F)
                if need > 1:
                    out.add(stack[:-1] + ((a, i, cp, need - 1),))
                elif _in_class(self.alts[a][i], cp):
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
                cp = byte & (0x1F if need == 1 else 0x0F if need == 2 else 0x07)
                if _class_may_hold(el, need):
                    out.add(stack[:-1] + ((a, i, cp, need),))
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


def _class_may_hold(el, need: int) -> bool:
    """Whether a character of need+1 UTF-8 bytes can be in the class (prunes early for ASCII-only classes)."""
    if el[0] == "byte":
        return False
    if el[2]:
        return True
    lo_cp = (0x80, 0x800, 0x10000)[need - 1]
    hi_cp = (0x7FF, 0xFFFF, 0x10FFFF)[need - 1]
    return any(lo <= hi_cp and hi >= lo_cp for lo, hi in el[1])
