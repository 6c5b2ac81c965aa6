"""Merge loops: rank-ordered BPE (GPT-2 style merges lists) and score-ordered SentencePiece BPE.

Both keep the word as a doubly linked list of symbols and a heap of candidate pairs, so a word of n symbols
costs O(n log n), not the O(n^2) of rescanning for the best pair after every merge. A heap entry can go stale
when a neighbour merged first; it is checked against the live symbols when popped and dropped if so.
"""

import heapq


def _bytes_to_unicode() -> list[str]:
    """GPT-2's byte -> printable character table: printable Latin-1 bytes map to themselves, the other 68 bytes
    to U+0100 onwards, so every byte string is a string of visible characters."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1)) + list(range(0xAE, 0xFF + 1))
    table = [""] * 256
    extra = 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


BYTE_TO_CHAR = _bytes_to_unicode()
CHAR_TO_BYTE = {ch: b for b, ch in enumerate(BYTE_TO_CHAR)}


def byte_level_encode(text: str) -> str:
    """UTF-8 bytes of `text` spelled with GPT-2's byte characters."""
    table = BYTE_TO_CHAR
    return "".join([table[b] for b in text.encode("utf-8")])


# byte_level_decode in one str.translate: each table character to the Latin-1 character of its byte, every
# other character below U+0100 to its UTF-8 spelled in Latin-1 characters (characters from U+0100 on that
# are not in the table make the Latin-1 encode fail: the loop below then spells them)
_DECODE = str.maketrans(
    {ch: chr(b) for b, ch in enumerate(BYTE_TO_CHAR)}
    | {chr(c): chr(c).encode("utf-8").decode("latin-1") for c in range(256) if chr(c) not in CHAR_TO_BYTE}
)


def byte_level_decode(piece: str) -> bytes:
    """Inverse of byte_level_encode; characters outside the table stand for their own UTF-8."""
    try:
        return piece.translate(_DECODE).encode("latin-1")  # a vocabulary's ~50-250k pieces at load
    except UnicodeEncodeError:
        pass
    out = bytearray()
    for ch in piece:
        b = CHAR_TO_BYTE.get(ch)
        if b is None:
            out += ch.encode("utf-8")
        else:
            out.append(b)
    return bytes(out)


def merge_by_rank(symbols: list[str], ranks: dict[str, int]) -> list[str]:
    """Apply merges lowest rank first (leftmost first among equal ranks) until no adjacent pair has a rank.

    `ranks` is keyed by the merge as the vocabulary writes it, "left right": the GGUF/HF merges list loads into
    a dict without splitting half a million strings, and a lookup is one concatenation."""
    get = ranks.get
    return _merge(list(symbols), lambda a, b: get(a + " " + b))


def merge_by_score(text: str, scores: dict[str, float]) -> list[str]:
    """SentencePiece BPE as llama.cpp runs it (llm_tokenizer_spm): start from characters, repeatedly join the
    adjacent pair whose concatenation is a vocabulary piece with the highest score (leftmost on ties).

    `scores` maps piece text -> score for every vocabulary piece. Returns the final symbols: every merged symbol
    is a piece; a lone character may not be, and then falls back to byte pieces."""
    get = scores.get

    def priority(a: str, b: str):
        s = get(a + b)
        return None if s is None else -s

    return _merge(list(text), priority)


def _merge(sym: list[str], priority) -> list[str]:
    """The BPE merge loop shared by both vocab kinds: repeatedly join the adjacent pair with the smallest
    `priority(a, b)` (None: not mergeable), leftmost first on ties. Symbols form a linked list and candidate
    pairs a heap, so each merge costs O(log n) instead of a rescan."""
    n = len(sym)
    if n < 2:
        return sym
    nxt = list(range(1, n + 1))
    nxt[-1] = -1
    prv = list(range(-1, n - 1))
    heap = []
    for i in range(n - 1):
        r = priority(sym[i], sym[i + 1])
        if r is not None:
            heap.append((r, i, i + 1, sym[i], sym[i + 1]))
    heapq.heapify(heap)
    while heap:
        _, left, right, a, b = heapq.heappop(heap)
        # Stale if either side changed since this pair was pushed.
        if nxt[left] != right or sym[left] != a or sym[right] != b:
            continue
        merged = a + b
        sym[left] = merged
        sym[right] = ""
        after = nxt[right]
        nxt[left] = after
        if after != -1:
            prv[after] = left
        nxt[right] = -2  # dead
        before = prv[left]
        if before != -1:
            r = priority(sym[before], merged)
            if r is not None:
                heapq.heappush(heap, (r, before, left, sym[before], merged))
        if after != -1:
            r = priority(merged, sym[after])
            if r is not None:
                heapq.heappush(heap, (r, left, after, merged, sym[after]))
    out = []
    i = 0
    while i != -1:
        out.append(sym[i])
        i = nxt[i]
    return out
