"""A generated multilingual corpus for tokenizer agreement tests: deterministic (seeded), a few hundred strings
mixing scripts, emoji (ZWJ sequences, skin tones, flags), combining marks, RTL text, code, whitespace runs,
digit runs in several scripts, contractions in both cases, and odd code points."""

import random

WORDS = [
    "Hello",
    "world",
    "the",
    "quick",
    "brown",
    "fox",
    "Äpfel",
    "naïve",
    "façade",
    "Straße",
    "ÉCOLE",
    "über",
    "привет",
    "мир",
    "Бълг",
    "γειά",
    "σου",
    "κόσμε",
    "你好",
    "世界",
    "中文分词",
    "日本語",
    "ひらがな",
    "カタカナ",
    "한국어",
    "안녕하세요",
    "مرحبا",
    "بالعالم",
    "שלום",
    "עולם",
    "नमस्ते",
    "दुनिया",
    "สวัสดี",
    "ជំរាបសួរ",
    "ሰላም",
    "Ελληνικά",
    "ǅemal",
    "ﬁnance",
    "ｆｕｌｌｗｉｄｔｈ",
    "𝔘𝔫𝔦𝔠𝔬𝔡𝔢",
    "𐐷𐐸",
    "ℌ",
    "Ⅻ",
    "x²",
    "½",
    "٣٤٥",
    "१२३",
    "１２３",
    "੧੨",
    "e\u0301",
    "a\u0308\u0304",
    "n\u0303",
    "Z\u0351\u0352\u0353",
    "\u0915\u094d\u0937",
]
EMOJI = [
    "🦙",
    "😀",
    "👍🏽",
    "👨\u200d👩\u200d👧\u200d👦",
    "🏳️\u200d🌈",
    "🇫🇷",
    "🇯🇵",
    "❤️",
    "🧑🏿\u200d🚀",
    "1️⃣",
    "©",
    "™",
    "👩\u200d💻",
    "🫠",
    "🤌🏻",
]
CODE = [
    "def f(x):\n    return x**2\n",
    "for (int i = 0; i < n; ++i) {\n\tsum += a[i];\n}",
    "if x != y && z >= 3:",
    "std::vector<int> v{1,2,3};",
    "SELECT * FROM t WHERE id=42;",
    '<div class="a">&amp;</div>',
    "x = {'k': [1, 2.5e-3, None]}",
    "// comment\r\n/* block */",
    "λx.x",
    "a+=b-->c",
    "#!/bin/sh\necho $HOME",
    "```python\nprint('hi')\n```",
    "$$\\frac{a}{b}$$",
    "C:\\\\path\\\\to",
    "0x1F600 0b1010 0o777",
]
SPACES = [
    " ",
    "  ",
    "   ",
    "\t",
    "\n",
    "\n\n",
    "\r\n",
    " \n ",
    "\t\t",
    "\u00a0",
    "\u3000",
    "\u2003",
    "\u2028",
    "\u200b",
    "\x0b",
    "\x0c",
    "\x85",
    " \t \n",
    "        ",
    "\n   \n",
    "\x1c",
    "\x1f",
]
DIGITS = [
    "0",
    "7",
    "42",
    "123",
    "1234",
    "12345678901",
    "3.14159",
    "1,000,000",
    "2024-01-31",
    "٠١٢٣٤٥٦٧٨٩",
    "１２３４",
    "²³",
    "ⅠⅡⅢ",
    "0.5e10",
    "-17",
    "৩৪",
]
CONTRACTIONS = [
    "don't",
    "I'm",
    "you're",
    "we've",
    "they'll",
    "he'd",
    "it's",
    "DON'T",
    "I'M",
    "YOU'RE",
    "WE'VE",
    "THEY'LL",
    "HE'D",
    "IT'S",
    "'s",
    "'S",
    "'ll",
    "O'Neil",
    "rock'n'roll",
    "''",
    "'",
    "'''x",
]
ODD = [
    "\x00",
    "\x01",
    "\x7f",
    "\ufffd",
    "\ufeff",
    "\ue000",
    "\U0010fffd",
    "\u0378",
    "\U0001f9ff",
    "\u061c",
    "\u200e",
    "\u200f",
    "\u202e",
    "\u2066",
    "\U000e0041",
    "\ufe0f",
    "\u034f",
    "🏻",
    "\u0300",
    "\u3099",
    "\x04",
    "\x1d",
    "\U00040000",
    "\U000f0000",
]  # the last four: bytes some byte-level vocabularies lack
POOLS = [WORDS, WORDS, WORDS, EMOJI, CODE, SPACES, SPACES, DIGITS, CONTRACTIONS, ODD]

FIXED = [
    "",
    " ",
    "Hello world",
    " Hello world",
    "Hello World!",
    "   leading and trailing   ",
    "\n\n\nnewlines\n\n",
    "ied 4 ½ months",
    "w048 7tuijk dsdfhu",
    "I'll   Hello\t\tworld \n\n  ok",
    "3333333 33333 333",
    "(hello) [world] {x}",
    "!!!???...",
    "a\r\nb\rc\nd",
    " 'hello' \"world\"",
    "Ὀδυσσεύς",
    "  \u3000 x",
]


def corpus(seed: int = 1234, n: int = 300) -> list[str]:
    rng = random.Random(seed)
    out = list(FIXED)
    for _ in range(n):
        parts = []
        for _ in range(rng.randint(1, 12)):
            pool = rng.choice(POOLS)
            parts.append(rng.choice(pool))
            if rng.random() < 0.6:
                parts.append(rng.choice([" ", " ", "", "\n", "  "]))
        out.append("".join(parts))
    # Random assigned BMP and astral code points, in short runs.
    for _ in range(60):
        s = []
        for _ in range(rng.randint(1, 8)):
            cp = rng.choice(
                [
                    rng.randint(0x20, 0x2FFF),
                    rng.randint(0x3000, 0xD7FF),
                    rng.randint(0xE000, 0xFFFD),
                    rng.randint(0x10000, 0x1FAFF),
                ]
            )
            s.append(chr(cp))
            if rng.random() < 0.3:
                s.append(" ")
        out.append("".join(s))
    return out
