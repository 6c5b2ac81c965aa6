"""Structured output: constrained decoding by a grammar (GBNF, a JSON schema, or any JSON object) and
tool calling, in pure Python (runs in Pyodide).

  grammar.py          GBNF text -> Grammar (rules as data)
  json_schema.py      JSON schema -> GBNF; the generic JSON grammar
  matcher.py          byte-at-a-time pushdown recogniser with interned, memoised states
  token_mask.py       per-tokenizer trie of token bytes; allowed-token bitmask per matcher state
  constraint.py       one request's position in the grammar (what the engine drives)
  response_format.py  OpenAI response_format -> GBNF
  tools.py            tools / tool_choice: prompt, forced-call schema, parsing into tool_calls
"""

from .constraint import Constraint
from .grammar import Grammar, GrammarError
from .json_schema import JSON_OBJECT_GBNF, schema_to_gbnf
from .matcher import Matcher
from .response_format import response_format_gbnf

__all__ = [
    "Constraint",
    "Grammar",
    "GrammarError",
    "JSON_OBJECT_GBNF",
    "Matcher",
    "response_format_gbnf",
    "schema_to_gbnf",
]
