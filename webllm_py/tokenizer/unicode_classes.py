"""Unicode character classes the pre-tokenizer patterns use (\\p{L}, \\p{N}, \\p{M}, \\s), from unicodedata.

Stdlib `re` has no \\p{..} and the browser has no `regex`, so the split patterns are hand-written scanners
(pretokenize.py) that ask this module what class each character is in. Classes are cached per character.
"""

import unicodedata

# Class codes: one per character. A character is exactly one of these.
LETTER = 1  # \p{L}: Lu Ll Lt Lm Lo
NUMBER = 2  # \p{N}: Nd Nl No
SPACE = 3  # \s: the Unicode White_Space property (what Oniguruma/Rust regex and llama.cpp use)
MARK = 4  # \p{M}: Mn Mc Me (only Qwen 3.5's pattern treats marks apart from "other")
OTHER = 5  # everything else: punctuation, symbols, controls, unassigned...

# White_Space (PropList.txt). Not str.isspace(): that one also counts U+001C..U+001F, which \s does not.
WHITE_SPACE = frozenset(
    "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a"
    "\u2028\u2029\u202f\u205f\u3000"
)

_BY_CATEGORY = {
    "Lu": LETTER,
    "Ll": LETTER,
    "Lt": LETTER,
    "Lm": LETTER,
    "Lo": LETTER,
    "Nd": NUMBER,
    "Nl": NUMBER,
    "No": NUMBER,
    "Mn": MARK,
    "Mc": MARK,
    "Me": MARK,
}

_cache: dict[str, int] = {}


def char_class(ch: str) -> int:
    """The class code of one character (cached)."""
    c = _cache.get(ch)
    if c is None:
        if ch in WHITE_SPACE:
            c = SPACE
        else:
            c = _BY_CATEGORY.get(unicodedata.category(ch), OTHER)
        _cache[ch] = c
    return c


def classes(text: str) -> list[int]:
    """Class codes for every character of `text` (one pass, cached lookups)."""
    cache = _cache
    out = []
    append = out.append
    for ch in text:
        c = cache.get(ch)
        if c is None:
            c = char_class(ch)
        append(c)
    return out


def is_punctuation(ch: str) -> bool:
    """\\p{P}: Pc Pd Ps Pe Pi Pf Po."""
    return unicodedata.category(ch)[0] == "P"
