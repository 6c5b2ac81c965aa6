"""Tool calling for any model: request validation, the prompt, the forced-call schema, and parsing the
output into OpenAI-shaped `tool_calls`.

The prompt: a chat template that uses the `tools` variable (Qwen 2.5, Llama 3.1, Hermes, ...) renders
the tools itself; for any other template (e.g. plain ChatML) the tools are described in a system
message that asks for a call as one JSON object {"name": ..., "arguments": {...}}.

tool_choice: "none" leaves the tools out; "auto" (the default with tools) lets the model choose and
parses its answer; "required" or {"type": "function", "function": {"name": ...}} forces a call: the
output is constrained by the schema {"name": <const>, "arguments": <the function's parameters>}
(anyOf over the tools for "required").

Parsing accepts what common templates make models write: a bare {"name", "arguments"} object, the same
inside <tool_call>...</tool_call> tags, "parameters" for "arguments" (Llama 3.1), or a list of calls.
"""

from __future__ import annotations

import json
import uuid

from ..errors import RequestError

_TAG_OPEN = "<tool_call>"


def validate_tools(tools) -> list[dict]:
    """The request's `tools`, checked: a list of {"type": "function", "function": {"name", ...}}."""
    if not isinstance(tools, list) or not tools:
        raise RequestError(
            "tools must be a non-empty list of {type: 'function', function: {name, description, parameters}} objects."
        )
    seen = set()
    for i, t in enumerate(tools):
        if (
            not isinstance(t, dict)
            or t.get("type", "function") != "function"
            or not isinstance(t.get("function"), dict)
        ):
            raise RequestError(f"tools[{i}] must be {{type: 'function', function: {{name, parameters}}}}.")
        f = t["function"]
        name = f.get("name")
        if not isinstance(name, str) or not name:
            raise RequestError(f"tools[{i}].function.name must be a non-empty string.")
        if name in seen:
            raise RequestError(f"tools[{i}].function.name {name!r} is used by two tools.")
        seen.add(name)
        params = f.get("parameters", {"type": "object", "properties": {}})
        if not isinstance(params, dict):
            raise RequestError(f"tools[{i}].function.parameters must be a JSON schema object.")
    return tools


def tool_choice_mode(tool_choice, tools) -> tuple[str, str | None]:
    """("none" | "auto" | "required", forced function name or None)."""
    if tool_choice is None:
        return ("auto" if tools else "none"), None
    if isinstance(tool_choice, str):
        if tool_choice not in ("none", "auto", "required"):
            raise RequestError(
                f"tool_choice must be 'none', 'auto', 'required' or {{type: 'function', function: "
                f"{{name}}}}, got {tool_choice!r}."
            )
        if tool_choice != "none" and not tools:
            raise RequestError(f"tool_choice {tool_choice!r} needs a non-empty tools list.")
        return tool_choice, None
    if (
        isinstance(tool_choice, dict)
        and tool_choice.get("type") == "function"
        and isinstance(tool_choice.get("function"), dict)
        and isinstance(tool_choice["function"].get("name"), str)
    ):
        name = tool_choice["function"]["name"]
        names = [t["function"]["name"] for t in tools or []]
        if name not in names:
            raise RequestError(
                f"tool_choice names function {name!r}, which is not in tools ({', '.join(names) or 'none'})."
            )
        return "required", name
    raise RequestError("tool_choice must be 'none', 'auto', 'required' or {type: 'function', function: {name}}.")


def _params(tool: dict) -> dict:
    return tool["function"].get("parameters") or {"type": "object", "properties": {}}


def forced_call_schema(tools: list[dict], name: str | None) -> dict:
    """The JSON schema a forced call's output must satisfy."""
    chosen = [t for t in tools if name is None or t["function"]["name"] == name]
    alts = [
        {
            "type": "object",
            "properties": {"name": {"const": t["function"]["name"]}, "arguments": _params(t)},
            "required": ["name", "arguments"],
        }
        for t in chosen
    ]
    return alts[0] if len(alts) == 1 else {"anyOf": alts}


def template_uses_tools(template: str | None) -> bool:
    return bool(template) and "tools" in template


def tool_system_prompt(tools: list[dict]) -> str:
    # Short on purpose: every word is prefill work on each request.
    lines = ["Functions you can call (JSON schema of the arguments):"]
    for t in tools:
        f = t["function"]
        desc = f": {f['description']}" if f.get("description") else ""
        lines.append(f"- {f['name']}{desc} {json.dumps(_params(t), ensure_ascii=False, separators=(',', ':'))}")
    lines.append('To call one, reply with only {"name": <function>, "arguments": {...}}.')
    return "\n".join(lines)


def messages_with_tool_prompt(messages: list[dict], tools: list[dict]) -> list[dict]:
    """For templates that do not render `tools`: describe them in the system message, and write earlier
    assistant tool calls as the JSON the model is asked to produce (such templates only print content)."""
    out = []
    for m in messages:
        if isinstance(m, dict) and m.get("role") == "assistant" and m.get("tool_calls"):
            calls = [
                {"name": c["function"]["name"], "arguments": _loads_or_keep(c["function"].get("arguments", "{}"))}
                for c in m["tool_calls"]
            ]
            m = {**m, "content": json.dumps(calls[0] if len(calls) == 1 else calls, ensure_ascii=False)}
            m.pop("tool_calls")
        elif isinstance(m, dict) and m.get("content") is None:
            m = {**m, "content": ""}
        out.append(m)
    prompt = tool_system_prompt(tools)
    if out and out[0].get("role") == "system":
        out[0] = {**out[0], "content": f"{out[0].get('content') or ''}\n\n{prompt}".strip()}
    else:
        out.insert(0, {"role": "system", "content": prompt})
    return out


def _loads_or_keep(s):
    if not isinstance(s, str):
        return s
    try:
        return json.loads(s)
    except ValueError:
        return s


def parse_tool_calls(text: str, tools: list[dict]) -> list[dict] | None:
    """OpenAI `tool_calls` found in `text` (arguments as JSON text), or None when it holds no call."""
    names = {t["function"]["name"] for t in tools}
    dec = json.JSONDecoder()
    calls: list[dict] = []
    i = 0
    while i < len(text):
        j = min((k for k in (text.find("{", i), text.find("[", i)) if k >= 0), default=-1)
        if j < 0:
            break
        try:
            obj, end = dec.raw_decode(text, j)
        except ValueError:
            i = j + 1
            continue
        for item in obj if isinstance(obj, list) else [obj]:
            call = _as_call(item, names)
            if call:
                calls.append(call)
        i = end
    return calls or None


def _as_call(obj, names: set) -> dict | None:
    if not isinstance(obj, dict):
        return None
    if obj.get("type") == "function" and isinstance(obj.get("function"), dict):
        obj = obj["function"]
    name = obj.get("name")
    if name not in names:
        return None
    args = _loads_or_keep(obj.get("arguments", obj.get("parameters", {})))
    # A function's parameters are an object (OpenAI's tools take an object schema): `arguments` that are a
    # list, a number or text that is not JSON were passed on as a call the caller's json.loads then refused or
    # misread; such output stays content, as text that is not a call does.
    if not isinstance(args, dict):
        return None
    return {
        "id": "call_" + uuid.uuid4().hex[:24],
        "type": "function",
        "function": {
            "name": name,
            "arguments": json.dumps(args, ensure_ascii=False),
        },
    }


def may_become_call(text: str) -> bool:
    """Whether streamed `text` could still be the start of a tool call (so it is held back)."""
    s = text.lstrip()
    return not s or s[0] in "{[" or _TAG_OPEN.startswith(s[: len(_TAG_OPEN)]) or s.startswith(_TAG_OPEN)
