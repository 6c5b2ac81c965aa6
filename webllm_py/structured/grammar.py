"""Grammars as data: a GBNF (llama.cpp's EBNF dialect) parser and the lowered form the matcher runs.

GBNF in one breath: `name ::= alternatives` rules; an alternative is a sequence of "literals" (escapes
\\n \\t \\r \\\\ \\" \\xHH \\uHHHH \\UHHHHHHHH), [character classes] ([^...] negated, a-z ranges), `.` (any
character), rule names, ( groups ), each optionally followed by * + ? {m} {m,} {m,n}; `#` comments. The
start rule is `root`.

Lowered form (`Grammar`): rules are lists of alternatives, an alternative is a tuple of elements:
  ("ref", rule_index)           another rule
  ("byte", bits)                one byte whose value b has bit b set in the int `bits`
  ("char", ranges, negated)     one Unicode character (1-4 UTF-8 bytes) in / not in [lo, hi] ranges
Literals become byte elements of their UTF-8 encoding, so the matcher works on bytes and a token that
ends inside a multi-byte character is matched as far as it goes. Repetitions become helper rules:
  x*  -> R ::= x R | ε        x+ -> x R        x? -> R ::= x | ε
  x{m,n} -> m copies of x, then n-m nested optionals (O_k ::= x O_k-1 | ε), so the count lives in the
  matcher's stack and bounded lengths (maxLength, maxItems) cost no counters.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import RequestError


class GrammarError(RequestError):
    """A grammar (GBNF text or one built from a JSON schema) is malformed or unsupported."""


# -- AST -----------------------------------------------------------------------------------------------
# ("seq", [items]) ("alt", [seqs]) ("lit", str) ("cls", [(lo, hi)], negated) ("ref", name) ("rep", item, m, n|None)


class _Parser:
    def __init__(self, text: str):
        self.s, self.i = text, 0

    def error(self, msg: str):
        line = self.s.count("\n", 0, self.i) + 1
        col = self.i - (self.s.rfind("\n", 0, self.i) + 1) + 1
        raise GrammarError(f"grammar: {msg} at line {line}, column {col}")

    def ws(self, newlines: bool = True) -> None:
        s = self.s
        while self.i < len(s):
            c = s[self.i]
            if c == "#":
                while self.i < len(s) and s[self.i] != "\n":
                    self.i += 1
            elif c in " \t\r" or (newlines and c == "\n"):
                self.i += 1
            else:
                break

    def name(self) -> str:
        j = self.i
        while self.i < len(self.s) and (self.s[self.i].isalnum() or self.s[self.i] in "-_"):
            self.i += 1
        if j == self.i:
            self.error("expected a rule name")
        return self.s[j : self.i]

    def rules(self) -> dict:
        out: dict = {}
        self.ws()
        while self.i < len(self.s):
            name = self.name()
            self.ws()
            if not self.s.startswith("::=", self.i):
                self.error(f"expected '::=' after rule name {name!r}")
            self.i += 3
            self.ws()
            body = self.alternatives(top=True)
            if name in out:
                self.error(f"rule {name!r} is defined twice")
            out[name] = body
            self.ws()
        return out

    def alternatives(self, top: bool):
        alts = [self.sequence(top)]
        while self.i < len(self.s) and self.s[self.i] == "|":
            self.i += 1
            self.ws(newlines=not top)  # an empty last alternative ends at the newline
            alts.append(self.sequence(top))
        return ("alt", alts)

    def sequence(self, top: bool):
        items = []
        while True:
            # Inside ( ) newlines are spaces. At the top level a newline ends the rule when what follows is
            # the next `name ::=` or the end; a line starting with `|` continues the alternatives.
            self.ws(newlines=not top)
            if top and self.i < len(self.s) and self.s[self.i] == "\n":
                self.ws()
                if self.i >= len(self.s) or self._at_rule_start():
                    return ("seq", items)
            if self.i >= len(self.s) or self.s[self.i] in "|)":
                return ("seq", items)
            items.append(self.postfix(self.atom()))

    def _at_rule_start(self) -> bool:
        j = self.i
        while j < len(self.s) and (self.s[j].isalnum() or self.s[j] in "-_"):
            j += 1
        if j == self.i:
            return False
        while j < len(self.s) and self.s[j] in " \t":
            j += 1
        return self.s.startswith("::=", j)

    def atom(self):
        s = self.s
        c = s[self.i]
        if c == '"':
            self.i += 1
            out = []
            while True:
                if self.i >= len(s):
                    self.error("unterminated string literal")
                if s[self.i] == '"':
                    self.i += 1
                    return ("lit", "".join(out))
                out.append(self.char())
        if c == "[":
            self.i += 1
            negated = self.i < len(s) and s[self.i] == "^"
            if negated:
                self.i += 1
            ranges = []
            while True:
                if self.i >= len(s):
                    self.error("unterminated character class")
                if s[self.i] == "]":
                    self.i += 1
                    return ("cls", ranges, negated)
                lo = self.char()
                hi = lo
                if self.i + 1 < len(s) and s[self.i] == "-" and s[self.i + 1] != "]":
                    self.i += 1
                    hi = self.char()
                if ord(hi) < ord(lo):
                    self.error(f"empty range {lo!r}-{hi!r}")
                ranges.append((ord(lo), ord(hi)))
        if c == "(":
            self.i += 1
            self.ws()
            body = self.alternatives(top=False)
            self.ws()
            if self.i >= len(s) or s[self.i] != ")":
                self.error("expected ')'")
            self.i += 1
            return body
        if c == ".":
            self.i += 1
            return ("cls", [], True)
        if c.isalnum() or c in "-_":
            return ("ref", self.name())
        self.error(f"unexpected {c!r}")

    def char(self) -> str:
        s = self.s
        c = s[self.i]
        self.i += 1
        if c != "\\":
            return c
        if self.i >= len(s):
            self.error("dangling backslash")
        e = s[self.i]
        self.i += 1
        simple = {
            "n": "\n",
            "t": "\t",
            "r": "\r",
            "\\": "\\",
            '"': '"',
            "[": "[",
            "]": "]",
            "-": "-",
            "^": "^",
            "/": "/",
            "f": "\f",
            "b": "\b",
            "0": "\0",
        }
        if e in simple:
            return simple[e]
        width = {"x": 2, "u": 4, "U": 8}.get(e)
        if width is None:
            self.error(f"unknown escape \\{e}")
        digits = s[self.i : self.i + width]
        if len(digits) != width or any(d not in "0123456789abcdefABCDEF" for d in digits):
            self.error(f"\\{e} needs {width} hex digits")
        self.i += width
        cp = int(digits, 16)
        if cp > 0x10FFFF:
            self.error(f"code point {cp:#x} is beyond U+10FFFF")
        return chr(cp)

    def postfix(self, item):
        s = self.s
        while self.i < len(s):
            c = s[self.i]
            if c in "*+?":
                self.i += 1
                item = ("rep", item, {"*": 0, "+": 1, "?": 0}[c], None if c != "?" else 1)
            elif c == "{":
                j = s.find("}", self.i)
                if j < 0:
                    self.error("unterminated {m,n}")
                body = s[self.i + 1 : j].replace(" ", "")
                try:
                    if "," in body:
                        a, b = body.split(",", 1)
                        m, n = int(a or 0), (int(b) if b else None)
                    else:
                        m = n = int(body)
                except ValueError:
                    self.error(f"bad repetition {{{body}}}")
                if n is not None and n < m:
                    self.error(f"repetition {{{m},{n}}} has max < min")
                self.i = j + 1
                item = ("rep", item, m, n)
            else:
                break
        return item


def parse_gbnf(text: str) -> dict:
    """GBNF text -> {rule name: AST}."""
    if not isinstance(text, str) or not text.strip():
        raise GrammarError("grammar must be non-empty GBNF text with a `root ::= ...` rule")
    try:
        return _Parser(text).rules()
    except RecursionError:  # one Python call per level of parentheses
        raise GrammarError("grammar nests too deeply (hundreds of levels of parentheses)") from None


# -- lowering --------------------------------------------------------------------------------------------
@dataclass
class Grammar:
    """Rules as lists of alternatives (tuples of elements, see the module docstring); rule 0 is root."""

    rules: list = field(default_factory=list)
    names: list = field(default_factory=list)

    @classmethod
    def from_gbnf(cls, text: str, root: str = "root") -> "Grammar":
        return _lower(parse_gbnf(text), root)


# Elements and helper rules a lowered grammar may hold: {m,n} expands into copies and nested optionals, so a
# large count, or counts nested in each other, would otherwise take minutes and gigabytes ("a"{1000000000})
MAX_ELEMENTS = 1 << 21


def _lower(ast_rules: dict, root: str) -> Grammar:
    if root not in ast_rules:
        raise GrammarError(f"grammar has no `{root} ::= ...` rule (the start rule)")
    g = Grammar()
    index: dict[str, int] = {}
    left = MAX_ELEMENTS

    def spend(n: int) -> None:
        """Count n more elements against MAX_ELEMENTS before making them."""
        nonlocal left
        left -= n
        if left < 0:
            raise GrammarError(
                f"grammar is too large (over {MAX_ELEMENTS} elements once its literals and {{m,n}} repetitions "
                "are expanded): use * or + for long runs, smaller {m,n} counts or shorter literals"
            )

    def new_rule(name: str) -> int:
        g.rules.append([])
        g.names.append(name)
        return len(g.rules) - 1

    for name in [root] + [n for n in ast_rules if n != root]:
        index[name] = new_rule(name)

    def byte_el(b: int):
        return ("byte", 1 << b)

    def seq_of(node, owner: str) -> list:
        """Elements of one alternative for `node` (a sub-alternation becomes a helper rule)."""
        kind = node[0]
        if kind == "seq":
            out = []
            for it in node[1]:
                out.extend(seq_of(it, owner))
            return out
        if kind == "alt":
            if len(node[1]) == 1:
                return seq_of(node[1][0], owner)
            r = new_rule(f"{owner}-alt")
            g.rules[r] = [tuple(seq_of(a, owner)) for a in node[1]]
            return [("ref", r)]
        if kind == "lit":
            data = node[1].encode("utf-8")
            spend(len(data))
            return [byte_el(b) for b in data]
        if kind == "cls":
            ranges, negated = node[1], node[2]
            if not negated and all(hi < 0x80 for _, hi in ranges):
                bits = 0
                for lo, hi in ranges:
                    bits |= ((1 << (hi + 1)) - 1) ^ ((1 << lo) - 1)
                return [("byte", bits)]
            return [("char", tuple(ranges), negated)]
        if kind == "ref":
            if node[1] not in index:
                raise GrammarError(f"grammar: rule {node[1]!r} is used but not defined")
            return [("ref", index[node[1]])]
        if kind == "rep":
            item, m, n = node[1], node[2], node[3]
            one = seq_of(item, owner)
            # m copies, then one star rule or n - m optional rules of x and a ref each
            spend(len(one) * m + (len(one) + 2) * (1 if n is None else n - m))
            out = one * m
            if n is None:  # R ::= x R | ε
                r = new_rule(f"{owner}-star")
                g.rules[r] = [tuple(one) + (("ref", r),), ()]
                out.append(("ref", r))
            elif n > m:  # O_k ::= x O_k-1 | ε
                prev = None
                for _ in range(n - m):
                    r = new_rule(f"{owner}-opt")
                    g.rules[r] = [tuple(one) + ((("ref", prev),) if prev is not None else ()), ()]
                    prev = r
                out.append(("ref", prev))
            return out
        raise GrammarError(f"grammar: unknown node {kind}")

    for name, body in ast_rules.items():
        alts = body[1] if body[0] == "alt" else [body]
        g.rules[index[name]] = [tuple(seq_of(a, name)) for a in alts]
    return g


def gbnf_literal(s: str) -> str:
    """`s` as a GBNF string literal."""
    out = ['"']
    for c in s:
        if c in '"\\':
            out.append("\\" + c)
        elif c == "\n":
            out.append("\\n")
        elif c == "\r":
            out.append("\\r")
        elif c == "\t":
            out.append("\\t")
        elif ord(c) < 0x20 or ord(c) == 0x7F:
            out.append(f"\\x{ord(c):02X}")
        else:
            out.append(c)
    out.append('"')
    return "".join(out)
