"""JSON schema -> grammar, checked against the independent references `jsonschema` and `json.loads`:
for hypothesis-generated schemas, every valid instance (generated from the schema, validated by
jsonschema) is accepted in each layout the grammar allows, and every corruption of it that the grammar
accepts is still JSON that jsonschema validates (the grammar never lets an invalid output through).
Plus: the generic json_object grammar, unsupported keywords named in RequestError, $ref / anyOf."""

from __future__ import annotations

import json

import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from webllm_py.errors import RequestError
from webllm_py.structured import response_format_gbnf
from webllm_py.structured.json_schema import JSON_OBJECT_GBNF, schema_to_gbnf
from webllm_py.structured.grammar import Grammar
from webllm_py.structured.matcher import Matcher

from .structured_schemas import instances, schemas, spellings

SETTINGS = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)


def matcher_for(schema) -> Matcher:
    return Matcher(Grammar.from_gbnf(schema_to_gbnf(schema)))


def valid(schema, text: str) -> bool:
    try:
        value = json.loads(text)
    except ValueError:
        return False
    return jsonschema.Draft202012Validator(schema).is_valid(value)


def corruptions(text: str):
    """Edits of a valid text: drop / duplicate / replace a character, cut the end."""
    return st.one_of(
        st.integers(0, max(len(text) - 1, 0)).map(lambda i: text[:i] + text[i + 1 :]),
        st.integers(0, max(len(text) - 1, 0)).map(lambda i: text[:i] + text[i : i + 1] * 2 + text[i + 1 :]),
        st.tuples(st.integers(0, len(text)), st.sampled_from(list('{}[]",:0-1.etn "\\aé '))).map(
            lambda a: text[: a[0]] + a[1] + text[a[0] + 1 :]
        ),
        st.integers(0, max(len(text) - 1, 0)).map(lambda i: text[:i]),
    )


@SETTINGS
@given(st.data(), schemas())
def test_valid_instances_accepted_corruptions_never_invalid(data, schema):
    m = matcher_for(schema)
    value = data.draw(instances(schema), label="instance")
    jsonschema.validate(value, schema)  # the strategy's own sanity: instances are valid
    for text in spellings(value):
        assert m.accepts(text), (schema, text)
        assert m.accepts(" " + text)  # one leading space (SentencePiece's first piece)
    for _ in range(4):
        bad = data.draw(corruptions(spellings(value)[0]), label="corrupted")
        if m.accepts(bad):
            assert valid(schema, bad), (schema, bad)


@SETTINGS
@given(
    st.recursive(
        st.none()
        | st.booleans()
        | st.integers(-(10**15), 10**15)
        | st.floats(allow_nan=False, allow_infinity=False)
        | st.text(max_size=6),
        lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=4), c, max_size=4),
        max_leaves=12,
    ),
    st.data(),
)
def test_json_object_grammar(value, data):
    m = Matcher(Grammar.from_gbnf(JSON_OBJECT_GBNF))
    for text in spellings(value):
        assert m.accepts(text) == isinstance(value, dict), text
    text = spellings(value)[0]
    bad = data.draw(corruptions(text))
    if m.accepts(bad):
        assert isinstance(json.loads(bad), dict)


def test_prefixes_and_completion():
    schema = {"type": "object", "properties": {"a": {"enum": ["x", "y"]}, "b": {"type": "boolean"}}, "required": ["a"]}
    m = matcher_for(schema)
    text = '{"a": "x", "b": true}'
    st_ = m.initial
    for i, b in enumerate(text.encode()):
        assert not st_.accepting
        st_ = m.step(st_, b)
        assert st_ is not None, text[: i + 1]
    assert st_.accepting and st_.complete  # nothing may follow the closing brace
    assert m.accepts('{"a":"y"}') and not m.accepts('{"b":true}') and not m.accepts('{"a":"z"}')
    assert not m.is_prefix('{"a": "x", "c"')


@pytest.mark.parametrize(
    "schema, keyword",
    [
        ({"type": "integer", "minimum": 0}, "minimum"),
        ({"type": "string", "pattern": "^a+$"}, "pattern"),
        ({"type": "string", "format": "date"}, "format"),
        ({"type": "array", "items": {"type": "integer"}, "uniqueItems": True}, "uniqueItems"),
        ({"type": "object", "properties": {"a": {"type": "number", "multipleOf": 2}}}, "multipleOf"),
        ({"type": "object", "patternProperties": {"^a": {}}}, "patternProperties"),
        ({"not": {"type": "string"}}, "not"),
    ],
)
def test_unsupported_keyword_is_named(schema, keyword):
    with pytest.raises(RequestError, match=keyword):
        schema_to_gbnf(schema)


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "object", "required": ["a"]},  # was any object: {} came out, which the schema refuses
        {"type": "object", "required": "a"},
        {"type": "object", "properties": {"ab": {}}, "required": "ab"},  # a str: was "a" in "ab", a substring test
        {"type": "object", "properties": {"a": {}}, "required": [["a"]]},
    ],
    ids=["required-without-properties", "required-str", "required-str-with-properties", "required-of-lists"],
)
def test_object_required_that_is_not_a_list_of_its_properties_is_a_request_error(schema):
    """`required` was read only beside `properties`, and then as any container: without properties the names
    were dropped (the output an object the schema refuses), and a string was tested by substring."""
    with pytest.raises(RequestError, match=r"JSON schema at #: required (must be a list of property names|names)"):
        schema_to_gbnf(schema)
    assert matcher_for({"type": "object", "properties": {"a": {}}, "required": ["a"]}).accepts('{"a":1}')


def test_ref_anyof_type_lists_and_recursion():
    schema = {
        "$defs": {
            "node": {
                "type": "object",
                "properties": {"v": {"type": "integer"}, "kids": {"type": "array", "items": {"$ref": "#/$defs/node"}}},
                "required": ["v"],
            }
        },
        "type": "object",
        "properties": {
            "root": {"$ref": "#/$defs/node"},
            "tag": {"anyOf": [{"type": "string", "maxLength": 2}, {"type": "null"}]},
            "n": {"type": ["integer", "null"]},
        },
        "required": ["root", "tag", "n"],
    }
    m = matcher_for(schema)
    for value in (
        {"root": {"v": 1, "kids": [{"v": 2, "kids": []}, {"v": 3}]}, "tag": None, "n": None},
        {"root": {"v": 1}, "tag": "ab", "n": 5},
    ):
        jsonschema.validate(value, schema)
        assert m.accepts(json.dumps(value))
    assert not m.accepts(json.dumps({"root": {"v": 1}, "tag": "abc", "n": 5}))


def test_response_format_errors_say_what_is_wrong():
    with pytest.raises(RequestError, match="json_schema.schema"):
        response_format_gbnf({"type": "json_schema", "json_schema": {"name": "x"}})
    with pytest.raises(RequestError, match="json_schema: {name, schema"):
        response_format_gbnf({"type": "json_schema", "schema": {}})
    with pytest.raises(RequestError, match="json_schema.name"):
        response_format_gbnf({"type": "json_schema", "json_schema": {"name": 3, "schema": {}}})
    for strict in ("yes", "false", 1):  # each was accepted without a word
        with pytest.raises(RequestError, match="json_schema.strict must be true or false"):
            response_format_gbnf({"type": "json_schema", "json_schema": {"schema": {}, "strict": strict}})
    for strict in (True, False, None):
        assert response_format_gbnf({"type": "json_schema", "json_schema": {"schema": {}, "strict": strict}})
    with pytest.raises(RequestError, match="not supported"):
        response_format_gbnf({"type": "xml"})
    with pytest.raises(RequestError, match="line 2"):
        response_format_gbnf({"type": "grammar", "grammar": 'root ::= "a"\nb ::= ( "x"'})
    assert response_format_gbnf({"type": "text"}) is None


@pytest.mark.parametrize("required_every", [0, 3, 1], ids=["all-optional", "some-required", "all-required"])
def test_objects_of_thousands_of_properties_compile_and_match(required_every):
    """The optional-property chain was built by a recursion one call deep per property: ~1000 properties
    overflowed Python's stack (RecursionError, not a typed error). Instances are checked by jsonschema.
    (The matcher expands at most 400 rules before a character: so many optional properties in a row are
    refused there, with a GrammarError that says so; required ones are not limited.)"""
    n = 3000 if required_every == 1 else 350
    props = {f"p{i}": {"type": "integer"} for i in range(n)}
    required = [f"p{i}" for i in range(n) if required_every and i % required_every == 0]
    schema = {"type": "object", "properties": props, "required": required}
    m = matcher_for(schema)
    for value in ({k: 1 for k in required}, {k: 1 for k in props}, {**{k: 1 for k in required}, f"p{n - 1}": 7}):
        text = json.dumps(value)
        assert valid(schema, text) and m.accepts(text), text[:80]
    if required:
        text = json.dumps({k: 1 for k in required[1:]})  # the first required one missing
        assert not valid(schema, text) and not m.accepts(text)


@pytest.mark.parametrize("depth", [3000], ids=str)
def test_schemas_and_grammars_nested_past_the_stack_are_request_errors(depth):
    """Nesting deeper than Python's stack ended in RecursionError; it is a RequestError that says so."""
    schema: dict = {"type": "string"}
    for _ in range(depth):
        schema = {"type": "array", "items": schema}
    with pytest.raises(RequestError, match="nest"):
        schema_to_gbnf(schema)
    with pytest.raises(RequestError, match="nest"):
        response_format_gbnf({"type": "grammar", "grammar": "root ::= " + "(" * depth + '"a"' + ")" * depth})
    with pytest.raises(RequestError, match="optional properties"):  # not "left-recursive" alone
        matcher_for({"type": "object", "properties": {f"p{i}": {"type": "integer"} for i in range(1000)}}).accepts("{}")
    # The same shapes, shallow, still compile (the limit is the stack, not a rule of ours).
    assert matcher_for({"type": "array", "items": {"type": "array", "items": {"type": "string"}}}).accepts('[["a"]]')
