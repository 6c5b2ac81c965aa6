"""Streaming detokenizer: text out as soon as it is valid UTF-8.

A token may end in the middle of a multi-byte character (byte-fallback pieces, byte-level BPE pieces of CJK or
emoji), so the bytes of each token go through an incremental UTF-8 decoder: it returns every complete
character at once and holds back an incomplete tail. Malformed bytes become U+FFFD exactly as the one-shot
`Tokenizer.decode` does, so the chunks joined always equal the full decode.
"""

import codecs


class StreamDecoder:
    """`feed(token_id) -> str` per generated token, `flush() -> str` at the end."""

    def __init__(self, tokenizer, skip_special: bool = False):
        self._tok = tokenizer
        self._skip_special = skip_special
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._first = True

    def feed(self, token_id: int) -> str:
        if self._skip_special and self._tok.is_special(token_id):
            return ""
        b = self._tok.token_bytes(token_id)
        if self._first and b:
            # Same rule as Tokenizer.decode_bytes: SentencePiece's leading space of the first piece goes.
            self._first = False
            b = self._tok.decode_bytes([token_id])
        return self._utf8.decode(b)

    def flush(self) -> str:
        """Whatever is held back (an incomplete character at the very end becomes U+FFFD)."""
        out = self._utf8.decode(b"", final=True)
        self._utf8.reset()
        self._first = True
        return out
