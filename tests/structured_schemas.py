"""Hypothesis strategies for the structured-output tests: random JSON schemas (nested objects, enums,
arrays with min/maxItems, numbers, integers, booleans, null, required/optional properties, strings with
min/maxLength) and random valid instances of a given schema. Instances are checked with `jsonschema`
(the independent validator) by the tests, never by our grammar code."""

from __future__ import annotations

import json

from hypothesis import strategies as st

KEYS = st.text(alphabet="abcdefgxyz_", min_size=1, max_size=6)
SMALL_STR = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=5)
ENUM_VALUES = st.one_of(st.booleans(), st.none(), st.integers(-20, 20), st.text(alphabet='ab"\\ ', max_size=4))


def leaf_schemas(small: bool = False):
    strings = st.builds(
        lambda lo, extra, has_max: {
            "type": "string",
            "minLength": lo,
            **({"maxLength": lo + extra} if has_max or small else {}),
        },
        st.integers(0, 2),
        st.integers(0, 4),
        st.booleans(),
    )
    return st.one_of(
        st.just({"type": "boolean"}),
        st.just({"type": "null"}),
        st.just({"type": "integer"}),
        *(() if small else (st.just({"type": "number"}),)),
        strings,
        st.lists(ENUM_VALUES, min_size=1, max_size=4, unique_by=lambda v: json.dumps(v)).map(lambda v: {"enum": v}),
        ENUM_VALUES.map(lambda v: {"const": v}),
        st.just({"type": ["integer", "null"]}),
    )


def schemas(small: bool = False, depth: int = 3):
    """Random schemas; `small` keeps instances short (bounded strings and arrays, no floats)."""

    def extend(children):
        objects = st.dictionaries(KEYS, children, min_size=1, max_size=3 if small else 4).flatmap(
            lambda props: st.lists(st.sampled_from(sorted(props)), unique=True).map(
                lambda req: {"type": "object", "properties": props, "required": req}
            )
        )
        arrays = st.builds(
            lambda item, lo, extra, bounded: {
                "type": "array",
                "items": item,
                "minItems": lo,
                **({"maxItems": lo + extra} if bounded or small else {}),
            },
            children,
            st.integers(0, 2),
            st.integers(0, 2),
            st.booleans(),
        )
        return st.one_of(objects, arrays)

    return st.recursive(leaf_schemas(small), extend, max_leaves=4 if small else 8)


def object_schemas(small: bool = False):
    """Schemas whose root is an object (what response_format json_schema is used with)."""
    return st.dictionaries(KEYS, schemas(small), min_size=1, max_size=3).flatmap(
        lambda props: st.lists(st.sampled_from(sorted(props)), unique=True).map(
            lambda req: {"type": "object", "properties": props, "required": req}
        )
    )


def instances(schema: dict):
    """A strategy of valid instances of `schema` (as produced by the generator above)."""
    if "const" in schema:
        return st.just(schema["const"])
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    t = schema.get("type")
    if isinstance(t, list):
        return st.one_of(*(instances({**schema, "type": x}) for x in t))
    if t == "boolean":
        return st.booleans()
    if t == "null":
        return st.none()
    if t == "integer":
        return st.integers(-(10**15), 10**15)
    if t == "number":
        return st.one_of(st.integers(-(10**15), 10**15), st.floats(allow_nan=False, allow_infinity=False, width=64))
    if t == "string":
        return st.text(
            alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)),
            min_size=schema.get("minLength", 0),
            max_size=schema.get("maxLength", 8),
        )
    if t == "array":
        lo = schema.get("minItems", 0)
        return st.lists(instances(schema["items"]), min_size=lo, max_size=schema.get("maxItems", lo + 3))
    if t == "object":
        props, req = schema["properties"], set(schema.get("required", []))

        def pick(chosen):
            # Properties in declared order (the grammar's order), required ones always.
            keys = [k for k in props if k in req or k in chosen]
            return st.fixed_dictionaries({k: instances(props[k]) for k in keys}).map(lambda d: {k: d[k] for k in keys})

        optional = [k for k in props if k not in req]
        return st.sets(st.sampled_from(optional)).flatmap(pick) if optional else pick(set())
    raise AssertionError(f"no instance strategy for {schema}")


def spellings(value) -> list[str]:
    """JSON texts of one value in the layouts the grammar allows (compact, one space after : and ,)."""
    return [
        json.dumps(value, separators=(",", ":")),
        json.dumps(value),
        json.dumps(value, ensure_ascii=False, separators=(",", ":")),
    ]


def short_object_schemas():
    """Objects of 1-3 properties whose values stay a few tokens long (for the real model, ~1 tok/s):
    booleans, null, enums of short strings or small integers, strings of at most 4 characters."""
    value = st.one_of(
        st.just({"type": "boolean"}),
        st.just({"type": "null"}),
        st.lists(st.sampled_from(["red", "green", "blue", "yes", "no"]), min_size=2, max_size=3, unique=True).map(
            lambda v: {"enum": v}
        ),
        st.lists(st.integers(0, 9), min_size=2, max_size=4, unique=True).map(lambda v: {"type": "integer", "enum": v}),
        st.just({"type": "string", "maxLength": 4}),
    )
    keys = st.sampled_from(["a", "ok", "color", "n", "x"])
    return st.dictionaries(keys, value, min_size=1, max_size=3).flatmap(
        lambda props: st.lists(st.sampled_from(sorted(props)), unique=True).map(
            lambda req: {"type": "object", "properties": props, "required": req}
        )
    )
