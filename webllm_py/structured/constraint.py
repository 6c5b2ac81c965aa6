"""One request's constrained-decoding state: the grammar's matcher position after the tokens so far.

The engine asks `mask()` before each sampled step (written to the sampler's mask buffer) and calls
`advance(token)` after each token; `complete` says the grammar admits nothing more (stop now), and
end-of-sequence tokens are in the mask only while the output so far is a complete sentence.

Compiled matchers are cached per tokenizer and grammar text, so a repeated schema reuses every mask it
has computed before (masks live on the matcher's states).
"""

from __future__ import annotations

from ..errors import RequestError
from .grammar import Grammar, GrammarError
from .matcher import Matcher
from .token_mask import TokenTrie, allowed_mask

_MATCHERS_PER_TOKENIZER = 16


class Constraint:
    def __init__(self, tokenizer, gbnf: str, vocab_size: int | None = None):
        self.tokenizer = tokenizer
        self.trie = TokenTrie.for_tokenizer(tokenizer)
        self.words = -(-(vocab_size or self.trie.vocab_size) // 32)
        # Masks live on the matcher's states, so a matcher is only shared by requests with the same
        # vocabulary and mask size: one cache per trie, keyed by mask size too. Least recently used goes.
        cache = self.trie.matchers
        key = (gbnf, self.words)
        m = cache.pop(key, None)
        if m is None:
            m = Matcher(Grammar.from_gbnf(gbnf))
        cache[key] = m  # (re)inserted last: dicts keep insertion order
        while len(cache) > _MATCHERS_PER_TOKENIZER:
            del cache[next(iter(cache))]
        self.matcher = m
        self.state = m.initial
        self.text = bytearray()
        # SentencePiece detokenizers drop the leading space of the first output piece ("▁{" shows as
        # "{"), so the grammar sees the first token without it, as the user will.
        self._strip_first = bool(getattr(tokenizer, "_strip_leading_space", False))

    @property
    def complete(self) -> bool:
        return self.state.complete

    @property
    def accepting(self) -> bool:
        return self.state.accepting

    def mask(self) -> bytes:
        m = allowed_mask(self.trie, self.matcher, self.state, self.words, strip_space=self._strip_first)
        if not m.strip(b"\0"):  # no token allowed (EOS would be, were the output complete): nothing to draw
            raise GrammarError(
                f"structured output: the grammar admits no token of this model's vocabulary after "
                f"{bytes(self.text)[-60:]!r} (it asks for characters no token writes)"
            )
        return m

    def advance(self, token_id: int) -> None:
        data = self.tokenizer.token_bytes(token_id)
        if self._strip_first:
            self._strip_first = False
            if data[:1] == b" ":
                data = data[1:]
        nxt = self.matcher.feed(self.state, data)
        if nxt is None:
            raise RequestError(
                f"structured output: token {token_id} ({data!r}) does not fit the grammar after "
                f"{bytes(self.text)[-60:]!r}; this is a bug in the token mask"
            )
        self.text += data
        self.state = nxt
