"""JSON schema -> GBNF grammar, and the generic JSON grammar behind response_format json_object.

What a schema becomes:
- object: its `properties` in declared order, each `required` one always, the others optionally (commas
  placed by rules that know whether a property came before); nothing else (as strict structured outputs
  do), so `additionalProperties` other than false adds nothing. No `properties`: any JSON object.
- array: `items` repeated minItems..maxItems times (unbounded: `*`); `prefixItems` a fixed tuple.
- string: JSON string characters (escapes included; an escaped surrogate pair is one character),
  minLength..maxLength characters; enum/const: the
  literal values; number / integer: JSON numbers (integers: up to 16 digits); boolean; null.
- type lists, `anyOf` / `oneOf` (alternatives; oneOf's exclusivity is not enforced), `$ref` to
  `#/$defs/...` or `#/definitions/...` (recursion allowed), `allOf` with one schema.
Anything that would need checks the grammar cannot express (minimum, pattern, format, multipleOf,
uniqueItems, ...) raises RequestError naming the keyword, rather than being silently ignored.

Whitespace: at most one space after `:` and `,` and around brackets is allowed (compact output; a
model cannot run away emitting blank lines), and a root value may be preceded by up to one space,
which SentencePiece vocabularies' leading-space pieces need.
"""

from __future__ import annotations

import json

from ..errors import RequestError
from .grammar import gbnf_literal

# Keywords that carry no constraint on the instance (annotations) or that we honour below.
_ANNOTATIONS = {
    "title",
    "description",
    "$schema",
    "$id",
    "$comment",
    "examples",
    "default",
    "deprecated",
    "readOnly",
    "writeOnly",
    "strict",
    "name",
    "nullable",
}  # OpenAPI's, not JSON Schema's: validators ignore it, so the grammar does too
_HANDLED = {
    "type",
    "properties",
    "required",
    "additionalProperties",
    "items",
    "minItems",
    "maxItems",
    "prefixItems",
    "enum",
    "const",
    "minLength",
    "maxLength",
    "anyOf",
    "oneOf",
    "allOf",
    "$ref",
    "$defs",
    "definitions",
}

_PRIMITIVES = r"""
ws ::= " "?
json-char ::= [^"\\\x00-\x1F] | "\\" (["\\/bfnrt] | "u" [0-9a-fA-F]{4}) | "\\u" [dD] [89abAB] [0-9a-fA-F]{2} "\\u" [dD] [c-fC-F] [0-9a-fA-F]{2}
string ::= "\"" json-char* "\""
integer ::= "-"? ("0" | [1-9] [0-9]{0,15})
number ::= integer ("." [0-9]{1,24})? ([eE] [-+]? [0-9]{1,3})?
boolean ::= "true" | "false"
null ::= "null"
value ::= object | array | string | number | boolean | null
object ::= "{" ws ( string ws ":" ws value ws ( "," ws string ws ":" ws value ws )* )? "}"
array ::= "[" ws ( value ws ( "," ws value ws )* )? "]"
"""

JSON_OBJECT_GBNF = "root ::= ws object\n" + _PRIMITIVES


class _Builder:
    def __init__(self, schema: dict):
        self.root_schema = schema
        self.rules: dict[str, str] = {}
        self.refs: dict[str, str] = {}
        self.n = 0

    def fresh(self, hint: str) -> str:
        self.n += 1
        return f"{hint}-{self.n}"

    def add(self, hint: str, body: str) -> str:
        name = self.fresh(hint)
        self.rules[name] = body
        return name

    def build(self, schema, path: str) -> str:
        """A GBNF expression (usually a rule name) for instances of `schema`."""
        if schema is True or schema == {}:
            return "value"
        if schema is False:
            raise RequestError(f"JSON schema at {path}: `false` admits no value")
        if not isinstance(schema, dict):
            raise RequestError(f"JSON schema at {path} must be an object, got {type(schema).__name__}")
        for k in schema:
            if k not in _HANDLED and k not in _ANNOTATIONS:
                raise RequestError(f"JSON schema keyword {k!r} (at {path}) is not supported by structured output")
        if "$ref" in schema:
            return self.ref(schema["$ref"], path)
        if "const" in schema:
            return "(" + gbnf_literal(_dump(schema["const"])) + ")"
        if "enum" in schema:
            vals = schema["enum"]
            if not isinstance(vals, list) or not vals:
                raise RequestError(f"JSON schema at {path}: enum must be a non-empty list")
            return "(" + " | ".join(gbnf_literal(_dump(v)) for v in vals) + ")"
        for key in ("anyOf", "oneOf"):
            if key in schema:
                subs = schema[key]
                if not isinstance(subs, list) or not subs:
                    raise RequestError(f"JSON schema at {path}: {key} must be a non-empty list")
                base = {k: v for k, v in schema.items() if k != key}
                alts = [
                    self.build({**base, **s} if isinstance(s, dict) else s, f"{path}/{key}/{i}")
                    for i, s in enumerate(subs)
                ]
                return self.add("any-of", " | ".join(alts))
        if "allOf" in schema:
            subs = schema["allOf"]
            if not isinstance(subs, list) or len(subs) != 1:
                raise RequestError(f"JSON schema at {path}: allOf is supported with exactly one schema")
            base = {k: v for k, v in schema.items() if k != "allOf"}
            return self.build({**base, **subs[0]}, path)
        t = schema.get("type")
        if isinstance(t, list):
            if not t:
                raise RequestError(f"JSON schema at {path}: type list is empty")
            return "(" + " | ".join(self.typed(x, schema, path) for x in t) + ")"
        if t is None:
            if "properties" in schema:
                t = "object"
            elif "items" in schema or "prefixItems" in schema:
                t = "array"
            else:
                return "value"
        return self.typed(t, schema, path)

    def typed(self, t: str, schema: dict, path: str) -> str:
        def only(allowed: set):
            extra = [k for k in schema if k in _HANDLED and k not in allowed | {"type", "$defs", "definitions"}]
            if extra:
                raise RequestError(f"JSON schema keyword {extra[0]!r} (at {path}) does not apply to type {t!r}")

        if t == "string":
            only({"minLength", "maxLength"})
            lo = _nonneg(schema.get("minLength", 0), "minLength", path)
            hi = schema.get("maxLength")
            if hi is None:
                return "string" if lo == 0 else self.add("string", f'"\\"" json-char{{{lo},}} "\\""')
            hi = _nonneg(hi, "maxLength", path)
            if hi < lo:
                raise RequestError(f"JSON schema at {path}: maxLength < minLength")
            return self.add("string", f'"\\"" json-char{{{lo},{hi}}} "\\""')
        if t in ("number", "integer", "boolean", "null"):
            only(set())
            return t
        if t == "array":
            only({"items", "minItems", "maxItems", "prefixItems"})
            if "prefixItems" in schema:
                if "items" in schema and schema["items"] is not False:
                    raise RequestError(
                        f"JSON schema at {path}: prefixItems with extra items is not supported (set items: false)"
                    )
                parts = [self.build(s, f"{path}/prefixItems/{i}") for i, s in enumerate(schema["prefixItems"])]
                if not parts:
                    return self.add("array", '"[" ws "]"')
                return self.add("array", '"[" ws ' + ' "," ws '.join(p + " ws" for p in parts) + ' "]"')
            item = self.build(schema.get("items", True), f"{path}/items")
            lo = _nonneg(schema.get("minItems", 0), "minItems", path)
            hi = schema.get("maxItems")
            hi = None if hi is None else _nonneg(hi, "maxItems", path)
            if hi is not None and hi < lo:
                raise RequestError(f"JSON schema at {path}: maxItems < minItems")
            if hi == 0:
                return self.add("array", '"[" ws "]"')
            more = f'("," ws {item} ws)'
            rest_lo = max(lo - 1, 0)
            rep = f"{{{rest_lo},}}" if hi is None else f"{{{rest_lo},{hi - 1}}}"
            body = f"{item} ws {more}{rep}"
            if lo == 0:
                body = f"({body})?"
            return self.add("array", f'"[" ws {body} "]"')
        if t == "object":
            only({"properties", "required", "additionalProperties"})
            props = schema.get("properties")
            required = schema.get("required", [])
            # Checked whether or not properties are given: without them required was never read (any object came
            # out, {} too, which the schema refuses); a str was "names not in properties" of itself, a list of
            # lists a TypeError (unhashable).
            if not isinstance(required, list) or not all(isinstance(r, str) for r in required):
                raise RequestError(
                    f"JSON schema at {path}: required must be a list of property names, got {required!r}"
                )
            if props is None:
                if not required:
                    return "object"
                props = {}  # the names required are then "not in properties", below
            elif not isinstance(props, dict):
                raise RequestError(f"JSON schema at {path}: properties must be an object")
            missing = [r for r in required if r not in props]
            if missing:
                raise RequestError(f"JSON schema at {path}: required names {missing!r} that are not in properties")
            return self.obj(props, set(required), path)
        raise RequestError(f"JSON schema at {path}: unknown type {t!r}")

    def obj(self, props: dict, required: set, path: str) -> str:
        names = list(props)
        kv = [
            gbnf_literal(json.dumps(k, ensure_ascii=False))
            + ' ws ":" ws '
            + self.build(props[k], f"{path}/properties/{k}")
            for k in names
        ]
        # rest(i, comma): the rule for properties i.. , `comma` = something came before (so a "," is due).
        n = len(names)
        rest: dict = {(n, True): "", (n, False): ""}

        def make(i: int, comma: bool) -> None:
            lead = '"," ws ' if comma else ""
            take = f"{lead}{kv[i]} ws {rest[i + 1, True]}".strip()
            if names[i] in required:
                body = take
            else:
                skip = rest[i + 1, comma]
                body = f"{take} | {skip}" if skip else f"{take} |"
            rest[i, comma] = self.add("obj-rest", body)

        # From the last property back (a recursion one call deep per property overflowed Python's stack at
        # ~1000): rest(i, True) for i = n-1..1, then rest(i, False) from the first required property (or the
        # last) back to 0 (after a required one, a "," is always due).
        for i in range(n - 1, 0, -1):
            make(i, True)
        first_required = next((i for i, name in enumerate(names) if name in required), n - 1)
        for i in range(min(first_required, n - 1), -1, -1):
            make(i, False)
        inner = rest[0, False]
        return self.add("object", f'"{{" ws {inner} "}}"')

    def ref(self, ref, path: str) -> str:
        if not isinstance(ref, str) or not ref.startswith("#/"):
            raise RequestError(f"JSON schema at {path}: only local $ref ('#/$defs/...') is supported, got {ref!r}")
        if ref in self.refs:
            return self.refs[ref]
        name = self.fresh("ref")
        self.refs[ref] = name
        target = self.root_schema
        for part in ref[2:].split("/"):
            part = part.replace("~1", "/").replace("~0", "~")
            if not isinstance(target, dict) or part not in target:
                raise RequestError(f"JSON schema at {path}: $ref {ref!r} points at nothing")
            target = target[part]
        self.rules[name] = self.build(target, ref)
        return name


def _nonneg(v, key: str, path: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise RequestError(f"JSON schema at {path}: {key} must be a non-negative integer, got {v!r}")
    if v > 10_000:
        raise RequestError(f"JSON schema at {path}: {key} = {v} is too large for structured output (max 10000)")
    return v


def _dump(v) -> str:
    return json.dumps(v, ensure_ascii=False, separators=(", ", ": "))


def schema_to_gbnf(schema) -> str:
    """The GBNF text for instances of `schema` (root rule `root`)."""
    b = _Builder(schema if isinstance(schema, dict) else {})
    try:
        top = b.build(schema, "#")
    except RecursionError:  # one Python call per level of the schema
        raise RequestError("JSON schema nests too deeply for structured output (hundreds of levels)") from None
    lines = [f"root ::= ws {top}"] + [f"{k} ::= {v}" for k, v in b.rules.items()]
    return "\n".join(lines) + "\n" + _PRIMITIVES
