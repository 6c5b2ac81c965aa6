"""Structured output end to end on the native backend (lavapipe): the OpenAI-shaped API with
response_format / tools, the mask applied on the GPU, the output checked by `json.loads` and
`jsonschema` (independent of our grammar code).

- A tiny random HF model (tests/hf_models.py, SmolLM2's byte-level vocabulary, ~14 tok/s) for many
  hypothesis-generated schemas (nested objects, enums, arrays with min/maxItems, integers, strings
  with maxLength, optional properties), sampled at temperature 1: a random model exercises the mask
  far from what a trained model would write. Also json_object, a GBNF grammar, streaming.
- SmolLM2-135M-Instruct (real weights, ~1 tok/s here) for a few short schemas, json_object and a
  forced tool call, plus the decode slowdown: host time spent on masks vs the decode time."""

from __future__ import annotations

import asyncio
import json
import re
import time

import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import webllm_py
from webllm_py.default_model import default_model_path
from webllm_py.errors import RequestError
from webllm_py.structured import constraint as constraint_mod

from .hf_models import BY_NAME, build
from .structured_schemas import object_schemas, short_object_schemas

pytestmark = [pytest.mark.gpu]


def run(coro):
    return asyncio.run(coro)


def json_schema_format(schema):
    return {"type": "json_schema", "json_schema": {"name": "out", "schema": schema, "strict": True}}


# -- tiny random model: many schemas ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny(tmp_path_factory, device):
    path = build(BY_NAME["llama-tied-bias-f32"], tmp_path_factory.mktemp("structured"))
    return run(webllm_py.create(path, device=device, context_window=512, prefill_chunk=32))


@settings(
    max_examples=20,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large],
)
@given(schema=object_schemas(small=True), seed=st.integers(0, 2**31))
def test_tiny_model_outputs_validate(tiny, schema, seed):
    r = run(
        tiny.completions.create(
            prompt="Data:", response_format=json_schema_format(schema), temperature=1.0, seed=seed, max_tokens=400
        )
    )
    choice = r["choices"][0]
    assert choice["finish_reason"] == "stop", (schema, choice)
    jsonschema.validate(json.loads(choice["text"]), schema)


def test_tiny_model_json_object_grammar_and_stream(tiny):
    r = run(
        tiny.completions.create(
            prompt="{",
            response_format={"type": "json_object"},
            temperature=1.0,
            seed=3,
            max_tokens=300,
            frequency_penalty=1.0,
        )
    )
    text = r["choices"][0]["text"]
    if r["choices"][0]["finish_reason"] == "stop":
        assert isinstance(json.loads(text), dict)
    else:  # a random model may nest on: the prefix must still be JSON-object-shaped
        assert text.lstrip().startswith("{")

    gbnf = 'root ::= ("yes" | "no") " " [0-9]{2,3} ("!" | "?")\n'
    r = run(
        tiny.completions.create(
            prompt="Answer:",
            response_format={"type": "grammar", "grammar": gbnf},
            temperature=1.0,
            seed=5,
            max_tokens=20,
        )
    )
    assert re.fullmatch(r"(yes|no) [0-9]{2,3}[!?]", r["choices"][0]["text"]), r["choices"][0]["text"]

    async def stream():
        out = []
        async for c in tiny.completions.create(
            prompt="Data:",
            stream=True,
            temperature=1.0,
            seed=9,
            max_tokens=200,
            response_format=json_schema_format(SCHEMA_A),
        ):
            out.append(c)
        return out

    chunks = run(stream())
    text = "".join(c["choices"][0]["text"] for c in chunks if c["choices"])
    jsonschema.validate(json.loads(text), SCHEMA_A)
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


SCHEMA_A = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 5},
        "tags": {"type": "array", "items": {"enum": ["a", "b"]}, "minItems": 1, "maxItems": 3},
        "n": {"type": "integer"},
    },
    "required": ["name", "tags"],
}


def test_request_errors(tiny):
    with pytest.raises(RequestError, match="minimum"):
        run(tiny.completions.create(prompt="x", response_format=json_schema_format({"type": "integer", "minimum": 1})))
    with pytest.raises(RequestError, match="json_schema"):
        run(tiny.completions.create(prompt="x", response_format={"type": "json_schema"}))
    with pytest.raises(RequestError, match="chat.completions"):
        run(tiny.completions.create(prompt="x", tools=[{"type": "function", "function": {"name": "f"}}]))
    # The engine stays usable after a rejected request.
    r = run(tiny.completions.create(prompt="x", max_tokens=2, temperature=0))
    assert r["choices"][0]["finish_reason"] in ("length", "stop")


# -- SmolLM2-135M-Instruct ----------------------------------------------------------------------------------
SYSTEM = {"role": "system", "content": "Answer in JSON."}


@pytest.fixture(scope="module")
def smol(device):
    return run(webllm_py.create(default_model_path(), device=device, context_window=512, prefill_chunk=32))


@pytest.mark.slow
@settings(
    max_examples=3,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(schema=short_object_schemas())
def test_smollm2_json_schema(smol, schema):
    r = run(
        smol.chat.completions.create(
            messages=[SYSTEM, {"role": "user", "content": "Fill in the fields."}],
            response_format=json_schema_format(schema),
            temperature=0,
            max_tokens=40,
        )
    )
    choice = r["choices"][0]
    assert choice["finish_reason"] == "stop", (schema, choice)
    jsonschema.validate(json.loads(choice["message"]["content"]), schema)


@pytest.mark.slow
def test_smollm2_json_object(smol):
    r = run(
        smol.chat.completions.create(
            messages=[SYSTEM, {"role": "user", "content": "Is the sky blue?"}],
            response_format={"type": "json_object"},
            temperature=0,
            max_tokens=40,
        )
    )
    choice = r["choices"][0]
    assert choice["finish_reason"] == "stop", choice
    assert isinstance(json.loads(choice["message"]["content"]), dict)


WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 12}, "unit": {"enum": ["celsius", "fahrenheit"]}},
            "required": ["city", "unit"],
        },
    },
}


@pytest.mark.slow
def test_smollm2_forced_tool_call(smol):
    r = run(
        smol.chat.completions.create(
            messages=[{"role": "user", "content": "Weather in Paris?"}],
            tools=[WEATHER],
            tool_choice={"type": "function", "function": {"name": "get_weather"}},
            temperature=0,
            max_tokens=40,
        )
    )
    choice = r["choices"][0]
    assert choice["finish_reason"] == "tool_calls", choice
    (call,) = choice["message"]["tool_calls"]
    assert call["type"] == "function" and call["function"]["name"] == "get_weather"
    jsonschema.validate(json.loads(call["function"]["arguments"]), WEATHER["function"]["parameters"])


@pytest.mark.slow
def test_smollm2_slowdown(smol, monkeypatch, capsys):
    """Decode with and without a constraint on the same prompt; the host time spent computing masks
    and advancing the matcher (all of the constraint's cost: the GPU's extra work is one AND per
    logit) must stay under 25% of the decode time."""
    spent = [0.0]
    orig_mask, orig_adv = constraint_mod.Constraint.mask, constraint_mod.Constraint.advance

    def timed(f):
        def g(self, *a):
            t = time.perf_counter()
            try:
                return f(self, *a)
            finally:
                spent[0] += time.perf_counter() - t

        return g

    monkeypatch.setattr(constraint_mod.Constraint, "mask", timed(orig_mask))
    monkeypatch.setattr(constraint_mod.Constraint, "advance", timed(orig_adv))
    msgs = [SYSTEM, {"role": "user", "content": "Describe a cat."}]
    n = 12
    free = run(smol.chat.completions.create(messages=msgs, temperature=0, max_tokens=n, ignore_eos=True))
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string"}, "color": {"type": "string"}},
        "required": ["name", "color"],
    }
    spent[0] = 0.0
    con = run(
        smol.chat.completions.create(
            messages=msgs, temperature=0, max_tokens=n, response_format=json_schema_format(schema)
        )
    )
    st_free, st_con = free["usage"], con["usage"]
    stats = smol.engine.last_stats
    per_token_ms = 1000 * spent[0] / max(st_con["completion_tokens"], 1)
    with capsys.disabled():
        print(
            f"\n[structured slowdown] free {st_free['extra']['decode_tokens_per_s']} tok/s, constrained "
            f"{st_con['extra']['decode_tokens_per_s']} tok/s; mask+advance {1000 * spent[0]:.1f} ms over "
            f"{st_con['completion_tokens']} tokens ({per_token_ms:.2f} ms/token, first visit of each state "
            f"included), decode {stats.decode_seconds:.2f} s"
        )
    assert spent[0] < 0.25 * stats.decode_seconds


def test_tiny_model_tool_calls_streamed_and_not(tiny):
    from .tool_defs import CHATML, TOOLS

    tiny.engine.tokenizer.chat_template = (
        CHATML  # a known template (not the checkpoint's own); plain ChatML: the fallback prompt
    )
    params = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
    msgs = [{"role": "user", "content": "Add 1 and 2."}]
    r = run(
        tiny.chat.completions.create(
            messages=msgs, tools=TOOLS, tool_choice="required", temperature=1.0, seed=1, max_tokens=200
        )
    )
    choice = r["choices"][0]
    assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] is None, choice
    (call,) = choice["message"]["tool_calls"]
    jsonschema.validate(json.loads(call["function"]["arguments"]), params[call["function"]["name"]])

    async def stream():
        return [
            c
            async for c in tiny.chat.completions.create(
                messages=msgs,
                tools=TOOLS,
                tool_choice={"type": "function", "function": {"name": "add"}},
                temperature=1.0,
                seed=2,
                max_tokens=200,
                stream=True,
            )
        ]

    chunks = run(stream())
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    calls = [tc for d in deltas for tc in d.get("tool_calls", [])]
    assert len(calls) == 1 and calls[0]["index"] == 0 and calls[0]["function"]["name"] == "add"
    jsonschema.validate(json.loads(calls[0]["function"]["arguments"]), params["add"])
    assert not any(d.get("content") for d in deltas)
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"

    # tool_choice "auto": the random model writes whatever it likes; the reply is one shape or the other.
    r = run(tiny.chat.completions.create(messages=msgs, tools=TOOLS, temperature=1.0, seed=3, max_tokens=8))
    m = r["choices"][0]["message"]
    assert (r["choices"][0]["finish_reason"] == "tool_calls") == ("tool_calls" in m)
    assert isinstance(m["content"], str) or m.get("tool_calls")
