"""Tool calling without a GPU: request validation, the prompt (a template that renders `tools` vs the
system-prompt fallback), the forced-call schema (checked with jsonschema) and parsing model output
into OpenAI tool_calls (arguments as JSON text that json.loads reads back)."""

from __future__ import annotations

import json

import jsonschema
import pytest

from webllm_py.errors import RequestError
from webllm_py.structured import tools as T
from webllm_py.structured.json_schema import schema_to_gbnf
from webllm_py.structured.grammar import Grammar
from webllm_py.structured.matcher import Matcher
from webllm_py.tokenizer.chat_template import render_chat_template

from .tool_defs import ADD, CHATML, TOOLS


# A Hermes/Qwen-style template written for this test: it renders `tools` itself.
TOOLS_TEMPLATE = """{%- if tools %}<|im_start|>system
# Tools
{% for t in tools %}{{ t.function | tojson }}
{% endfor %}Call a tool as <tool_call>{"name": ..., "arguments": ...}</tool_call><|im_end|>
{% endif %}{% for m in messages %}<|im_start|>{{ m.role }}
{{ m.content }}<|im_end|>
{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant
{% endif %}"""


@pytest.mark.parametrize(
    "text, calls",
    [
        ('{"name": "add", "arguments": {"a": 1, "b": 2}}', [("add", {"a": 1, "b": 2})]),
        ('<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": 2}}\n</tool_call>', [("add", {"a": 1, "b": 2})]),
        ('Sure. {"name": "now", "parameters": {}}', [("now", {})]),  # Llama 3.1 spelling
        (
            '[{"name": "add", "arguments": {"a": 0, "b": -1}}, {"name": "now", "arguments": {}}]',
            [("add", {"a": 0, "b": -1}), ("now", {})],
        ),
        ('{"name": "add", "arguments": "{\\"a\\": 5, \\"b\\": 6}"}', [("add", {"a": 5, "b": 6})]),  # arguments as text
        ('{"name": "mul", "arguments": {}}', None),  # not a known tool
        ("The answer is 3.", None),
        ('{"name": "add", "arguments": {"a": 1', None),  # cut off
        # arguments that are not an object are not a call (parameters are an object): they stay content
        ('{"name": "add", "arguments": [1, 2]}', None),
        ('{"name": "add", "arguments": 3}', None),
        ('{"name": "add", "arguments": "a=1, b=2"}', None),
        ('{"name": "add", "arguments": "[1]"}', None),
    ],
)
def test_parse_tool_calls(text, calls):
    got = T.parse_tool_calls(text, TOOLS)
    if calls is None:
        assert got is None
        return
    assert [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in got] == calls
    assert all(c["type"] == "function" and c["id"].startswith("call_") for c in got)
    assert len({c["id"] for c in got}) == len(got)


def test_forced_call_schema_and_grammar():
    named = T.forced_call_schema(TOOLS, "add")
    jsonschema.validate({"name": "add", "arguments": {"a": 1, "b": 2}}, named)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"name": "now", "arguments": {}}, named)
    anyof = T.forced_call_schema(TOOLS, None)
    m = Matcher(Grammar.from_gbnf(schema_to_gbnf(anyof)))
    for text in ('{"name": "add", "arguments": {"a": 1, "b": 2}}', '{"name":"now","arguments":{}}'):
        jsonschema.validate(json.loads(text), anyof)
        assert m.accepts(text)
    assert not m.accepts('{"name": "add", "arguments": {}}')
    assert not m.accepts('{"name": "mul", "arguments": {}}')


def test_tool_choice_and_validation():
    assert T.tool_choice_mode(None, TOOLS) == ("auto", None)
    assert T.tool_choice_mode(None, None) == ("none", None)
    assert T.tool_choice_mode("required", TOOLS) == ("required", None)
    assert T.tool_choice_mode({"type": "function", "function": {"name": "now"}}, TOOLS) == ("required", "now")
    with pytest.raises(RequestError, match="'mul', which is not in tools"):
        T.tool_choice_mode({"type": "function", "function": {"name": "mul"}}, TOOLS)
    with pytest.raises(RequestError, match="tool_choice must be"):
        T.tool_choice_mode("always", TOOLS)
    with pytest.raises(RequestError, match="needs a non-empty tools"):
        T.tool_choice_mode("required", None)
    with pytest.raises(RequestError, match=r"tools\[1\].function.name"):
        T.validate_tools([ADD, {"type": "function", "function": {}}])
    with pytest.raises(RequestError, match="used by two tools"):
        T.validate_tools([ADD, ADD])


def test_prompt_template_with_tools_and_fallback():
    msgs = [{"role": "user", "content": "1+2?"}]
    assert T.template_uses_tools(TOOLS_TEMPLATE) and not T.template_uses_tools(CHATML)
    rendered = render_chat_template(TOOLS_TEMPLATE, msgs, tools=TOOLS)
    assert '"name": "add"' in rendered and "# Tools" in rendered
    # Fallback: the tools go into a system message; earlier calls are written as the JSON asked for.
    history = msgs + [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "add", "arguments": '{"a": 1, "b": 2}'}}
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "3"},
    ]
    out = T.messages_with_tool_prompt(history, TOOLS)
    rendered = render_chat_template(CHATML, out)
    assert out[0]["role"] == "system" and "add: Add two integers" in out[0]["content"]
    assert json.loads(out[2]["content"]) == {"name": "add", "arguments": {"a": 1, "b": 2}}
    assert "<|im_start|>tool\n3<|im_end|>" in rendered
    with_system = T.messages_with_tool_prompt([{"role": "system", "content": "Be brief."}] + msgs, TOOLS)
    assert with_system[0]["content"].startswith("Be brief.") and len(with_system) == 2


def test_may_become_call():
    for held in ("", "  ", "{", ' {"na', "<tool", "<tool_call>\n{", "["):
        assert T.may_become_call(held), held
    for text in ("The", "<b>", "Hi {"):
        assert not T.may_become_call(text), text
