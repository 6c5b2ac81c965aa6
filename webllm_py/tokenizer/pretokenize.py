"""Pre-tokenizer split patterns, written as scanners over Unicode character classes.

Byte-level BPE tokenizers first cut text into "words" with a regex (GPT-2's, Llama 3's, ...), and BPE never
merges across words. The regexes use \\p{L}/\\p{N}, which stdlib `re` lacks, so each pattern is a scanner here
that walks the text once and makes the same leftmost-first choice the regex alternation would.

A pre-tokenizer is a list of stages; each stage splits every piece further, keeping the text between matches
as pieces of its own (llama.cpp applies several regexes this way, HF `Sequence` + `Split(behavior=Isolated)`
does the same). Names follow llama.cpp's `tokenizer.ggml.pre`.
"""

from ..errors import TokenizerError
from .unicode_classes import LETTER, MARK, NUMBER, SPACE, WHITE_SPACE, char_class, classes, is_punctuation

_NEWLINES = "\r\n"


def _contraction_len(text: str, i: int, n: int, any_case: bool) -> int:
    """Length of 's 't 're 've 'm 'll 'd at text[i] (text[i] == "'"), 0 if none."""
    if i + 1 >= n:
        return 0
    a = text[i + 1]
    if any_case:
        a = a.lower() if a in "STMDRVLstmdrvl" else a
    if a in "stmd":
        return 2
    if i + 2 < n:
        b = text[i + 2]
        if any_case and b in "EL":
            b = b.lower()
        if (a == "r" and b == "e") or (a == "v" and b == "e") or (a == "l" and b == "l"):
            return 3
    return 0


def split_gpt2(text: str) -> list[str]:
    """GPT-2: 's|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+"""
    n = len(text)
    cls = classes(text)
    out = []
    i = 0
    while i < n:
        ch = text[i]
        if ch == "'":
            k = _contraction_len(text, i, n, False)
            if k:
                out.append(text[i : i + k])
                i += k
                continue
        # " ?X+": an optional single space in front of a run of one class.
        j = i + 1 if ch == " " and i + 1 < n and cls[i + 1] != SPACE else i
        c = cls[j]
        if c == LETTER or c == NUMBER:
            k = j + 1
            while k < n and cls[k] == c:
                k += 1
        elif c != SPACE:  # [^\s\p{L}\p{N}]+ (marks count as "other" here)
            k = j + 1
            while k < n and cls[k] != SPACE and cls[k] != LETTER and cls[k] != NUMBER:
                k += 1
        else:  # \s+(?!\S) leaves the last space of a run to the word after it; else \s+
            k = i + 1
            while k < n and cls[k] == SPACE:
                k += 1
            if k < n and k - i > 1:
                k -= 1
        out.append(text[i:k])
        i = k
    return out


def _llama3_like(max_digits: int, marks_are_letters: bool):
    """Llama 3 / Qwen2 / Qwen3.5 family:
    (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,max}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|
    \\s*[\\r\\n]+|\\s+(?!\\S)|\\s+   (Qwen 3.5 reads \\p{L} as [\\p{L}\\p{M}])."""

    def split(text: str) -> list[str]:
        n = len(text)
        cls = classes(text)
        if marks_are_letters:
            cls = [LETTER if c == MARK else c for c in cls]
        out = []
        i = 0
        while i < n:
            ch = text[i]
            if ch == "'":
                k = _contraction_len(text, i, n, True)
                if k:
                    out.append(text[i : i + k])
                    i += k
                    continue
            c = cls[i]
            # [^\r\n\p{L}\p{N}]?\p{L}+
            if c == LETTER or (c != NUMBER and ch not in _NEWLINES and i + 1 < n and cls[i + 1] == LETTER):
                k = i + 1
                while k < n and cls[k] == LETTER:
                    k += 1
                out.append(text[i:k])
                i = k
                continue
            # \p{N}{1,max}
            if c == NUMBER:
                k = i + 1
                while k < n and k - i < max_digits and cls[k] == NUMBER:
                    k += 1
                out.append(text[i:k])
                i = k
                continue
            # " ?[^\s\p{L}\p{N}]+[\r\n]*"
            j = i + 1 if ch == " " else i
            if j < n and cls[j] != SPACE and cls[j] != LETTER and cls[j] != NUMBER:
                k = j + 1
                while k < n and cls[k] != SPACE and cls[k] != LETTER and cls[k] != NUMBER:
                    k += 1
                while k < n and text[k] in _NEWLINES:
                    k += 1
                out.append(text[i:k])
                i = k
                continue
            # text[i] is white space from here on.
            k = i + 1
            while k < n and cls[k] == SPACE:
                k += 1
            # \s*[\r\n]+ : backtracking ends the match just after the run's last \r or \n.
            p = k - 1
            while p >= i and text[p] not in _NEWLINES:
                p -= 1
            if p >= i:
                k = p + 1
            elif k < n and k - i > 1:  # \s+(?!\S)
                k -= 1
            out.append(text[i:k])
            i = k
        return out

    return split


split_llama3 = _llama3_like(3, False)
split_qwen2 = _llama3_like(1, False)
split_qwen35 = _llama3_like(1, True)


def split_each_digit(text: str) -> list[str]:
    """\\p{N} as a stage: every number character alone (StarCoder, SmolLM; HF Digits(individual_digits))."""
    out = []
    start = 0
    for i, c in enumerate(classes(text)):
        if c == NUMBER:
            if start < i:
                out.append(text[start:i])
            out.append(text[i])
            start = i + 1
    if start < len(text):
        out.append(text[start:])
    return out


def split_digit_runs(text: str) -> list[str]:
    """\\p{N}+ as a stage (HF Digits(individual_digits=False))."""
    out = []
    cls = classes(text)
    n = len(text)
    i = 0
    while i < n:
        k = i + 1
        num = cls[i] == NUMBER
        while k < n and (cls[k] == NUMBER) == num:
            k += 1
        out.append(text[i:k])
        i = k
    return out


_FALCON_SYMBOLS = frozenset("$+<=>^~|`")


def split_falcon_punct(text: str) -> list[str]:
    """[\\p{P}\\$\\+<=>\\^~\\|`]+ as a stage."""
    out = []
    n = len(text)
    i = 0
    while i < n:
        punct = text[i] in _FALCON_SYMBOLS or is_punctuation(text[i])
        k = i + 1
        while k < n and (text[k] in _FALCON_SYMBOLS or is_punctuation(text[k])) == punct:
            k += 1
        out.append(text[i:k])
        i = k
    return out


def split_three_ascii_digits(text: str) -> list[str]:
    """[0-9][0-9][0-9] as a stage."""
    out = []
    n = len(text)
    start = i = 0
    while i + 2 < n:
        if "0" <= text[i] <= "9" and "0" <= text[i + 1] <= "9" and "0" <= text[i + 2] <= "9":
            if start < i:
                out.append(text[start:i])
            out.append(text[i : i + 3])
            i += 3
            start = i
        else:
            i += 1
    if start < n:
        out.append(text[start:])
    return out


def _runs_stage(is_run, prefix=None, max_len=0):
    """A stage for `P?R+` (or R{1,max_len}): an optional single `prefix` character, then a run of `is_run`."""

    def stage(text: str) -> list[str]:
        out = []
        n = len(text)
        start = i = 0
        while i < n:
            j = i + 1 if prefix is not None and i + 1 < n and prefix(text[i]) and is_run(text[i + 1]) else i
            if is_run(text[j]):
                k = j + 1
                while k < n and (not max_len or k - j < max_len) and is_run(text[k]):
                    k += 1
                if start < i:
                    out.append(text[start:i])
                out.append(text[i:k])
                i = start = k
            else:
                i += 1
        if start < n:
            out.append(text[start:])
        return out

    return stage


def _re_stage(pattern: str):
    """A stage from a stdlib `re` pattern. Only for patterns of explicit character ranges (no \\p{..}); `\\s`
    here is spelled out as the White_Space set, since `re`'s \\s also matches U+001C..U+001F."""
    import re

    ws = "[" + "".join(sorted(WHITE_SPACE)).replace("\\", "\\\\") + "]"
    compiled = re.compile(pattern.replace(r"\s", ws))

    def stage(text: str) -> list[str]:
        out = []
        start = 0
        for m in compiled.finditer(text):
            if m.start() > start:
                out.append(text[start : m.start()])
            out.append(m.group())
            start = m.end()
        if start < len(text):
            out.append(text[start:])
        return out

    return stage


def _is_space(ch):
    return ch in WHITE_SPACE


def _is_letter(ch):
    return char_class(ch) == LETTER


def _is_number(ch):
    return char_class(ch) == NUMBER


_newline_each = _runs_stage(lambda ch: ch in _NEWLINES, max_len=1)
_cjk = _re_stage("[\u4e00-\u9fa5\u0800-\u4e00\uac00-\ud7ff]+")
DEEPSEEK_CODER = [
    _newline_each,
    _runs_stage(_is_letter, _is_space),
    _runs_stage(is_punctuation, _is_space),
    _cjk,
    _runs_stage(_is_number, max_len=1),
]
DEEPSEEK_LLM = [
    _newline_each,
    _re_stage(
        "\\s?[A-Za-z\xb5\xc0-\xd6\xd8-\xf6\xf8-\u01ba\u01bc-\u01bf\u01c4-\u0293\u0295-\u02af\u0370-\u0373\u0376"
        "\u0377\u037b-\u037d\u037f\u0386\u0388-\u038a\u038c\u038e-\u03a1\u03a3-\u03f5\u03f7-\u0481\u048a-\u052f"
        "\u0531-\u0556\u10a0-\u10c5\u13a0-\u13f5\u13f8-\u13fd\u1c90-\u1cba\u1cbd-\u1cbf\u1d00-\u1d2b\u1d6b-\u1d77"
        "\u1d79-\u1d9a\u1e00-\u1f15\u1f18-\u1f1d\u1f20-\u1f45\u1f48-\u1f4d\u1f50-\u1f57\u1f59\u1f5b\u1f5d"
        "\u1f5f-\u1f7d\u1f80-\u1fb4\u1fb6-\u1fbc\u1fbe\u1fc2-\u1fc4\u1fc6-\u1fcc\u1fd0-\u1fd3\u1fd6-\u1fdb"
        "\u1fe0-\u1fec\u1ff2-\u1ff4\u1ff6-\u1ffc\u2102\u2107\u210a-\u2113\u2115\u2119-\u211d\u2124\u2126\u2128"
        "\u212a-\u212d\u212f-\u2134\u2139\u213c-\u213f\u2145-\u2149\u214e\u2183\u2184\u2c00-\u2c7b\u2c7e-\u2ce4"
        "\u2ceb-\u2cee\u2cf2\u2cf3\ua640-\ua66d\ua680-\ua69b\ua722-\ua76f\ua771-\ua787\ua78b-\ua78e\uab70-\uabbf"
        "\ufb00-\ufb06\ufb13-\ufb17\uff21-\uff3a\uff41-\uff5a\U00010400-\U0001044f\U000104b0-\U000104d3"
        "\U000104d8-\U000104fb\U00010c80-\U00010cb2\U00010cc0-\U00010cf2\U000118a0-\U000118df"
        "\U0001e900-\U0001e943]+"
    ),
    _re_stage("\\s?[!-/:-~\uff01-\uff0f\uff1a-\uff5e\u2018-\u201f\u3000-\u3002]+"),
    _re_stage("\\s+\\Z"),
    _cjk,
    _runs_stage(_is_number),
]


# llama.cpp `tokenizer.ggml.pre` names -> stages (llama-vocab.cpp lists which names share a pattern).
_GPT2 = [split_gpt2]
_LLAMA3 = [split_llama3]
_QWEN2 = [split_qwen2]
_STARCODER = [split_each_digit, split_gpt2]
GGUF_PRE_TOKENIZERS = {
    **dict.fromkeys(
        [
            "gpt-2",
            "phi-2",
            "mpt",
            "olmo",
            "jais",
            "jina-es",
            "jina-de",
            "jina-v2-es",
            "jina-v2-de",
            "gigachat",
            "a.x-4.0",
            "mellum",
            "modern-bert",
            "exaone4",
            "trillion",
            "roberta-bpe",
            "jina-v1-en",
            "jina-v2-code",
            "granite-docling",
        ],
        _GPT2,
    ),
    **dict.fromkeys(
        [
            "llama3",
            "llama-v3",
            "llama-bpe",
            "falcon3",
            "falcon-h1",
            "pixtral",
            "midm-2.0",
            "lfm2",
            "dbrx",
            "smaug-bpe",
            "chatglm-bpe",
            "glm4",
            "glm5",
            "jina-v5-nano",
        ],
        _LLAMA3,
    ),
    **dict.fromkeys(
        ["qwen2", "deepseek-r1-qwen", "stablelm2", "megrez", "hunyuan", "kormo", "f2llmv2", "solar-open"], _QWEN2
    ),
    "qwen35": [split_qwen35],
    **dict.fromkeys(
        ["starcoder", "refact", "command-r", "smollm", "codeshell", "exaone", "minerva-7b", "mellum2"], _STARCODER
    ),
    "falcon": [split_falcon_punct, split_gpt2, split_three_ascii_digits],
    "deepseek-coder": DEEPSEEK_CODER,
    "deepseek-llm": DEEPSEEK_LLM,
}


def gguf_pre_tokenizer(name: str | None) -> list:
    """Stages for a GGUF `tokenizer.ggml.pre` name; raises TokenizerError for one we do not implement."""
    stages = GGUF_PRE_TOKENIZERS.get(name or "")
    if stages is None:
        raise TokenizerError(
            f"pre-tokenizer {name!r} (GGUF tokenizer.ggml.pre) is not supported; supported: "
            f"{', '.join(sorted(GGUF_PRE_TOKENIZERS))}"
        )
    return stages


# HF tokenizer.json `Split` regexes we know, keyed by their exact pattern text.
GPT2_PATTERN = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
HF_SPLIT_PATTERNS = {
    GPT2_PATTERN: split_gpt2,
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+": split_llama3,
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+": split_qwen2,
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+": split_qwen35,
}


def apply_stages(stages: list, text: str) -> list[str]:
    pieces = [text]
    for stage in stages:
        nxt = []
        for p in pieces:
            nxt.extend(stage(p))
        pieces = nxt
    return pieces
