"""Allowed-token masks: which tokens keep the output a prefix of the grammar, as a bitset for the GPU.

Per tokenizer, once (`TokenTrie.for_tokenizer`, cached): a trie of every token's raw bytes (byte-level
BPE pieces that are half a UTF-8 character are just bytes here, and the matcher takes characters a byte
at a time). Control tokens (chat markers, BOS/EOS) are left out: their text is not output text.

Per matcher state, once (`allowed_mask`, cached on the State): walk the trie from the root, advancing the
state one byte per edge; a rejected byte prunes its whole subtree, and the matcher's memoised
transitions make a step a dict lookup. Tokens reached are allowed; end-of-sequence tokens are allowed
when the state accepts. The mask is `ceil(vocab / 32)` little-endian u32 words, bit t of the bitset =
token t, which is what shaders/sampling_logits reads.
"""

from __future__ import annotations

import gc
import weakref
from bisect import bisect_right

from .matcher import Matcher, State

_TRIES: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


class TokenTrie:
    """Trie of token bytes, as a flat list `nodes` of tuples (token ids ending here, {byte: child's
    index} or None, bytes used below (an int bitset), start, end, depth below, utf8, chars below):
    order[start:end] are the ids of every token strictly below the node, the longest `depth below`
    bytes longer than it; bit p of `utf8` says every token's rest below the node is well-formed UTF-8
    (a last character may be cut short) when the node's path left p continuation bytes pending;
    `chars below` counts the most characters begun below the node (bytes that are not 0b10xxxxxx).

    The last four serve a shortcut of the walk. Inside free text most bytes take a state to one same
    successor: a JSON string stays a string on any plain character (a loop), a string of at most n
    characters moves one step along a chain of n states. A state's `run` is that byte set and how
    many such bytes in a row it accepts (its capacity; a loop: unbounded). When every byte below a
    node is in the run's set and the longest token below fits the capacity, every token below is
    allowed without visiting it. That turns a walk over most of the vocabulary into one over the
    tokens with a quote, backslash or non-ASCII byte.

    Near the end of a bounded string the longest token below a node rarely fits (Llama 3 has tokens of
    dozens of letters), so the fit is also taken in part: `by_length` lists the subtree's ids by length,
    and the tokens that fit the capacity are a prefix of that list.

    Strings hold non-ASCII characters too, which take a state through partial-character states and
    back: a run can be one of characters (run[3]), whose set then also holds the lead bytes that come
    back that way and every continuation byte, whose capacity counts characters, and which allows a
    subtree only if its tokens' rest is well-formed UTF-8 (a token of Cyrillic letters inside a JSON
    string is then taken with its subtree instead of walked byte by byte).
    """

    def __init__(self, token_bytes: list[bytes], eos_ids, vocab_size: int | None = None):
        self.vocab_size = vocab_size or len(token_bytes)
        self.lengths = [len(b) for b in token_bytes]  # bytes per token (small ints: shared objects)
        self.token_bytes = token_bytes
        self._by_length: dict = {}  # node index -> its subtree's ids by length (see by_length)
        self.eos_ids = sorted(i for i in eos_ids if 0 <= i < self.vocab_size)
        self.root: list = [[], {}]
        for tid, data in enumerate(token_bytes):
            if not data:
                continue
            node = self.root
            for b in data:
                kids = node[1]
                nxt = kids.get(b)
                if nxt is None:
                    nxt = kids[b] = [[], {}]
                node = nxt
            node[0].append(tid)
        self.order: list[int] = []
        self.nodes: list[tuple] = []
        self._index()
        self.matchers: dict = {}  # compiled grammars for this vocabulary (constraint.py keeps it small)

    def _index(self) -> None:
        order = self.order
        self.root += [0, 0, 0, 0, 0, 0]
        stack = [(self.root, False)]
        while stack:
            node, post = stack.pop()
            if not post:
                order.extend(node[0])
                if len(node) == 2:
                    node += [0, 0, 0, 0, 0, 0]
                node[3] = len(order)
                stack.append((node, True))
                stack.extend((child, False) for child in node[1].values())
            else:
                node[4] = len(order)
                bits = depth = chars = 0
                utf8 = 0b1111
                for b, child in node[1].items():
                    bits |= (1 << b) | child[2]
                    depth = max(depth, 1 + child[5])
                    chars = max(chars, (not 0x80 <= b <= 0xBF) + child[7])
                    utf8 &= _UTF8_AFTER[b][child[6]]
                node[2], node[5], node[6], node[7] = bits, depth, utf8, chars
                node.append(self._freeze(node))
        self.root = self.nodes[self.root[8]]

    def _freeze(self, node: list) -> int:
        """A built node as a tuple in self.nodes, its children as {byte: index}; returns its index.
        Tuples and dicts of ints only are left alone by the garbage collector, whose full passes would
        otherwise scan every node of the trie (and cost more than a mask walk)."""
        kids = {b: child[8] for b, child in node[1].items()} if node[1] else None
        self.nodes.append((tuple(node[0]) if node[0] else _NO_IDS, kids, *node[2:8]))
        node[1] = None  # the children's build lists go now, not at the end: a lower peak
        return len(self.nodes) - 1

    @classmethod
    def for_tokenizer(cls, tokenizer) -> "TokenTrie":
        """The trie of `tokenizer`'s vocabulary, built on first use and kept as long as the tokenizer."""
        trie = _TRIES.get(tokenizer)
        if trie is None:
            n = tokenizer.vocab_size
            data = [b"" if tokenizer.is_special(i) else tokenizer.token_bytes(i) for i in range(n)]
            trie = _TRIES[tokenizer] = cls(data, tokenizer.eos_ids, n)
        return trie

    def by_length(self, idx: int, depth: int, chars: bool = False) -> tuple:
        """(ids, ends) of node `idx` at `depth` bytes from the root: the ids below it ordered by length,
        and ends[k] = how many of them are at most k bytes (chars: characters begun) longer than the
        node. Worked out on first use and kept (on the trie, shared by every grammar): only nodes a run
        shortcut reached get one."""
        got = self._by_length.get((idx, chars))
        if got is None:
            node = self.nodes[idx]
            if chars:
                data = self.token_bytes
                size = {t: len(data[t][depth:].translate(None, _CONTINUATION)) for t in self.order[node[3] : node[4]]}
                ids = sorted(size, key=size.__getitem__)
                lens = [size[t] for t in ids]
            else:
                ids = sorted(self.order[node[3] : node[4]], key=self.lengths.__getitem__)
                lens = [self.lengths[t] - depth for t in ids]
            ends = tuple(bisect_right(lens, k) for k in range(node[7 if chars else 5] + 1))
            got = self._by_length[(idx, chars)] = (ids, ends)
        return got

    def allowed_ids(self, matcher: Matcher, state: State, strip_space: bool = False) -> list[int]:
        """Ids of the tokens whose bytes `state` accepts as a continuation (EOS not included).
        strip_space: a leading space of the token does not count (SentencePiece's first output piece,
        whose space the detokenizer drops): the subtree under b" " is walked from `state` itself."""
        out: list[int] = []
        step, order, nodes = matcher.step, self.order, self.nodes
        todo = [(self.root[1], state, 1)]  # (children, state before their byte, their depth)
        space = nodes[self.root[1][0x20]] if strip_space and 0x20 in self.root[1] else None
        if space is not None:
            todo = [({b: n for b, n in self.root[1].items() if b != 0x20}, state, 1)]
            out.extend(space[0])  # a lone space: nothing left of it
            if space[1]:
                todo.append((space[1], state, 2))
        pop, push, extend, by_length = todo.pop, todo.append, out.extend, self.by_length
        while todo:
            kids, st, depth = pop()
            trans = st.trans
            prev = None
            for b, idx in kids.items():
                node = nodes[idx]
                nxt = trans.get(b, _MISSING)
                if nxt is _MISSING:
                    nxt = step(st, b)
                if nxt is None:
                    continue
                if node[0]:
                    extend(node[0])
                if node[1]:
                    # A run costs 256 steps per state of its chain: worked out only where a run shows
                    # (a byte loops, or two sibling bytes lead to one state) above a big subtree.
                    run = nxt.run
                    if run is None and (nxt is st or nxt is prev) and node[4] - node[3] >= _RUN_MIN_TOKENS:
                        run = _run(step, nxt)
                    prev = nxt
                    if run is not None and not node[2] & ~run[0] and (not run[3] or node[6] & 1):
                        need = node[7] if run[3] else node[5]  # characters or bytes below
                        if need > run[1] and run[2] == _CUT:  # follow the chain as far as needed
                            run = _run(step, nxt, need + 1)
                        if need <= run[1]:
                            extend(order[node[3] : node[4]])
                            continue
                        if run[2] == _CLOSED and node[4] - node[3] >= _RUN_MIN_TOKENS:
                            # Too long in part: the tokens that fit are the shortest ones.
                            ids, ends = by_length(idx, depth, run[3])
                            extend(ids[: ends[run[1]]])
                            continue
                    push((node[1], nxt, depth + 1))
        return out


_MISSING = object()
_NO_IDS = ()
_UNBOUNDED = 1 << 62
_RUN_MIN_TOKENS = 32  # subtree size from which a state's run is worked out
_RUN_MAX_CHAIN = 16  # chain states looked at; capacities past this are under-counted (safe)
_CONTINUATION = bytes(range(0x80, 0xC0))  # UTF-8 continuation bytes 0b10xxxxxx
_CONTINUATION_BITS = sum(1 << b for b in range(0x80, 0xC0))


def _utf8_after(b: int, child_utf8: int) -> int:
    """Bit p set: with p continuation bytes pending, byte b is well-formed and the child's rest is too."""
    out = 0
    for p in range(4):
        if p:
            ok, after = 0x80 <= b <= 0xBF, p - 1
        else:
            ok, after = b < 0x80 or 0xC2 <= b <= 0xF4, 0 if b < 0x80 else _lead_need(b)
        if ok and child_utf8 >> after & 1:
            out |= 1 << p
    return out


def _lead_need(b: int) -> int:
    """Continuation bytes that follow the lead byte b (0xC2-0xF4)."""
    return 1 if b < 0xE0 else 2 if b < 0xF0 else 3


_UTF8_AFTER = [[_utf8_after(b, u) for u in range(16)] for b in range(256)]


def _largest_group(step, st: State):
    """(bits, successor): the largest set of bytes that all lead `st` to one same state."""
    groups: dict = {}
    for c in range(256):
        n = step(st, c)
        if n is not None:
            groups.setdefault(n, []).append(c)
    if not groups:
        return 0, None
    nxt, cs = max(groups.items(), key=lambda kv: len(kv[1]))
    return sum(1 << c for c in cs), nxt


def _char_leads(step, st: State, succ: State) -> int:
    """Bitset of the lead bytes whose every character (any continuation bytes) takes `st` to `succ`,
    as one more plain character would."""
    leads, seen = 0, {}

    def comes_back(p: State | None, need: int) -> bool:
        if p is None:
            return False
        key = (p.id, need)
        if key not in seen:
            after = {step(p, c) for c in range(0x80, 0xC0)}
            q = after.pop() if len(after) == 1 else None
            seen[key] = q is succ if need == 1 else comes_back(q, need - 1)
        return seen[key]

    for b in range(0xC2, 0xF5):
        if comes_back(step(st, b), _lead_need(b)):
            leads |= 1 << b
    return leads


def _takes_none(step, st: State, bits: int) -> bool:
    """Whether `st` rejects every byte of `bits`."""
    return all(step(st, c) is None for c in range(256) if bits >> c & 1)


# How a run ends (a State's run[2]). _CLOSED: the state after `capacity` bytes takes none of the run's
# bytes, so a longer run of them is rejected: the tokens that fit are exactly the allowed ones (the walk's
# slice by length). _OPEN: it may take some of them some other way (walk on). _CUT: the chain was followed
# no further than asked; the capacity is a lower bound, and a larger ask follows it further.
_OPEN, _CLOSED, _CUT = 0, 1, 2


def _group(step, st: State) -> tuple:
    """(bits, successor, chars): `st`'s largest group of bytes to one same state; where those are ASCII
    and whole non-ASCII characters lead there too, a group of characters (see TokenTrie)."""
    bits, nxt = _largest_group(step, st)
    if nxt is not None and bits and bits >> 0x80 == 0:
        leads = _char_leads(step, st, nxt)
        if leads:
            return bits | leads | _CONTINUATION_BITS, nxt, True
    return bits, nxt, False


def _run(step, st: State, limit: int = _RUN_MAX_CHAIN) -> tuple:
    """st.run = (bits, capacity, end, chars): how many bytes (chars: characters) of `bits` in a row `st`
    accepts, each taking it to the next state of a chain whose states have the same largest group (see
    TokenTrie), and how the run ends (_CLOSED, _OPEN or _CUT above); at most `limit` chain states are
    looked at."""
    run = st.run
    if run is not None and (run[2] != _CUT or run[1] >= limit):
        return run
    chain, seen = [], set()
    cur, tail = st, None
    while True:
        bits, nxt, chars = _group(step, cur)
        chain.append((cur, bits, chars))
        seen.add(cur.id)
        if nxt is None or bits == 0:
            break
        if nxt is cur:  # a loop: unbounded
            tail = (bits, _UNBOUNDED, _OPEN, chars)
            break
        if nxt.id in seen:  # a longer cycle: counted no further (safe: capacity 1 here)
            tail = (bits, 1, _OPEN, chars)
            break
        r = nxt.run
        if r is not None and (r[2] != _CUT or r[1] >= limit - len(chain)):
            break
        if len(chain) >= limit:
            tail = (bits, 1, _CUT, chars)
            break
        cur = nxt
    # The last state's run, then backwards: capacity = 1 + the successor's while the byte set stays.
    last, bits, chars = chain[-1]
    if tail is None:
        if bits == 0:
            tail = (0, 0, _CLOSED, False)
        else:
            r = nxt.run
            if r[0] == bits and r[3] == chars:
                tail = (bits, min(1 + r[1], _UNBOUNDED), r[2], chars)
            else:
                tail = (bits, 1, _CLOSED if _takes_none(step, nxt, bits) else _OPEN, chars)
    last.run = tail
    for (cur, bits, chars), (succ, _, _) in zip(reversed(chain[:-1]), reversed(chain[1:])):
        if tail[0] == bits and tail[3] == chars:
            tail = (bits, min(1 + tail[1], _UNBOUNDED), tail[2], chars)
        else:
            tail = (bits, 1, _CLOSED if _takes_none(step, succ, bits) else _OPEN, chars)
        cur.run = tail
    return st.run


def allowed_mask(
    trie: TokenTrie, matcher: Matcher, state: State, words: int | None = None, strip_space: bool = False
) -> bytes:
    """The state's mask as bytes of `words` u32 words (default: enough for the trie's vocabulary).
    strip_space: see TokenTrie.allowed_ids (cached apart, on the matcher)."""
    m = matcher.first_masks.get(state.id) if strip_space else state.mask
    if m is None:
        # The walk makes ~10^5 short-lived tuples and no reference cycles: with the collector on, their
        # allocations set off collections that traverse the whole trie and vocabulary (~2x the walk).
        collecting = gc.isenabled()
        gc.disable()
        try:
            ids = trie.allowed_ids(matcher, state, strip_space)
        finally:
            if collecting:
                gc.enable()
        if state.accepting:
            ids.extend(trie.eos_ids)
        m = _pack(ids, 32 * (words if words is not None else -(-trie.vocab_size // 32)))
        if strip_space:
            matcher.first_masks[state.id] = m
        else:
            state.mask = m
    return m


def _pack(ids: list[int], nbits: int) -> bytes:
    """Token ids -> little-endian bitset of nbits bits. One flag byte per token, then 8 strided
    slices of the flags folded into bit positions by C-level bytes/int operations."""
    flags = bytearray(nbits)
    try:
        for t in ids:
            flags[t] = 1
    except IndexError:  # a tokenizer may know more tokens than the model's logits have rows
        flags = bytearray(nbits)
        for t in ids:
            if t < nbits:
                flags[t] = 1
    acc = 0
    for j in range(8):
        acc |= int.from_bytes(bytes(flags[j::8]).translate(_SHIFTED[j]), "little")
    return acc.to_bytes(nbits // 8, "little")


_SHIFTED = [bytes([(1 << j) if v == 1 else 0 for v in range(256)]) for j in range(8)]


def mask_ids(mask: bytes) -> list[int]:
    """The token ids set in a mask (for tests and debugging)."""
    return [8 * i + k for i, byte in enumerate(mask) if byte for k in range(8) if byte >> k & 1]
