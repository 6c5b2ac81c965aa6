"""The request's `response_format` -> the GBNF grammar that constrains the output (or None).

  {"type": "text"}                                                  no constraint
  {"type": "json_object"}                                           any JSON object
  {"type": "json_schema", "json_schema": {"name", "schema", "strict"}}   an instance of the schema
  {"type": "grammar", "grammar": "<GBNF text>"}                     a sentence of the grammar
Each malformed shape raises RequestError saying what is expected.
"""

from __future__ import annotations

from ..errors import RequestError
from .grammar import Grammar
from .json_schema import JSON_OBJECT_GBNF, schema_to_gbnf

_SHAPES = (
    "{type: 'text'}, {type: 'json_object'}, {type: 'json_schema', json_schema: {name, schema}} or "
    "{type: 'grammar', grammar: '<GBNF>'}"
)


def response_format_gbnf(response_format) -> str | None:
    if response_format is None:
        return None
    if not isinstance(response_format, dict) or not isinstance(response_format.get("type"), str):
        raise RequestError(f"response_format must be one of {_SHAPES}; got {response_format!r}."[:400])
    kind = response_format["type"]
    if kind == "text":
        return None
    if kind == "json_object":
        return JSON_OBJECT_GBNF
    if kind == "json_schema":
        js = response_format.get("json_schema")
        if not isinstance(js, dict):
            raise RequestError(
                "response_format json_schema needs json_schema: {name, schema, strict?} "
                "(the JSON schema goes in json_schema.schema)."
            )
        if "name" in js and not isinstance(js["name"], str):
            raise RequestError("response_format json_schema.name must be a string.")
        if js.get("strict") is not None and not isinstance(js["strict"], bool):  # a typo or a string was taken silently
            raise RequestError(f"response_format json_schema.strict must be true or false, got {js['strict']!r}.")
        schema = js.get("schema")
        if not isinstance(schema, (dict, bool)):
            raise RequestError("response_format json_schema.schema must be a JSON schema object.")
        return schema_to_gbnf(schema)
    if kind == "grammar":
        g = response_format.get("grammar")
        if not isinstance(g, str) or not g.strip():
            raise RequestError("response_format grammar needs grammar: '<GBNF text>' with a `root ::= ...` rule.")
        Grammar.from_gbnf(g)  # malformed grammars fail here, with the line and column
        return g
    raise RequestError(f"response_format type {kind!r} is not supported: use {_SHAPES}.")
