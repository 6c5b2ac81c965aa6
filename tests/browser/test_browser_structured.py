"""Structured output in the browser: a json_schema request through the JS API (webllm.js -> worker ->
Pyodide -> WebGPU on SwiftShader) with SmolLM2; the output is checked here with json.loads and
jsonschema. Malformed structured options fail in webllm.js with a RequestError that says what to send.
Also measures, inside Pyodide, what masks cost there (trie build, first visit of a state, cached)."""

from __future__ import annotations

import json

import jsonschema
import pytest

from .conftest import run_python

pytestmark = [pytest.mark.browser]

MODEL = "SmolLM2-135M-Instruct.Q4_1.gguf"
SCHEMA = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}


def test_json_schema_through_webllm_js(webllm_page):
    r = webllm_page.evaluate(
        """async ([model, schema]) => {
        const engine = await webllm.create({ model });
        const messages = [{ role: "system", content: "Answer in JSON." }, { role: "user", content: "Is water wet?" }];
        const reply = await engine.chat.completions.create({ messages, temperature: 0, max_tokens: 12,
            response_format: { type: "json_schema", json_schema: { name: "answer", schema, strict: true } } });
        const errors = [];
        for (const bad of [{ response_format: { type: "json_schema", json_schema: { name: "x", schema: JSON.stringify(schema) } } },
                           { response_format: { type: "yaml" } },
                           { tools: [{ type: "function", function: {} }] },
                           { tool_choice: "always" }]) {
            try { await engine.chat.completions.create({ messages, max_tokens: 1, ...bad }); errors.push(null); }
            catch (e) { errors.push({ name: e.name, message: e.message }); }
        }
        // Python's own check (an unsupported keyword) comes back typed through the worker.
        try { await engine.chat.completions.create({ messages, max_tokens: 1, response_format:
                { type: "json_schema", json_schema: { name: "x", schema: { type: "string", pattern: "a+" } } } }); errors.push(null); }
        catch (e) { errors.push({ name: e.name, message: e.message }); }
        return { reply, errors };
    }""",
        [MODEL, SCHEMA],
    )
    choice = r["reply"]["choices"][0]
    assert choice["finish_reason"] == "stop", choice
    jsonschema.validate(json.loads(choice["message"]["content"]), SCHEMA)
    names = [e and e["name"] for e in r["errors"]]
    assert names == ["RequestError"] * 5, r["errors"]
    msgs = [e["message"] for e in r["errors"]]
    assert "not a JSON string" in msgs[0] and "response_format must be" in msgs[1]
    assert "tools[0]" in msgs[2] and "tool_choice must be" in msgs[3] and "'pattern'" in msgs[4]


def test_mask_cost_in_pyodide(webllm_page):
    """Runs after the request above: the worker's engine holds SmolLM2's tokenizer."""
    got = run_python(
        webllm_page,
        """
import gc, time
from webllm_py.worker import Session
from webllm_py.structured.constraint import Constraint
from webllm_py.structured.json_schema import schema_to_gbnf
from webllm_py.structured.token_mask import TokenTrie
tok = next(o for o in gc.get_objects() if isinstance(o, Session) and o.engine is not None).engine.engine.tokenizer
t = time.perf_counter()
TokenTrie([b"" if tok.is_special(i) else tok.token_bytes(i) for i in range(tok.vocab_size)], tok.eos_ids)
trie_s = time.perf_counter() - t
schema = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"},
          "pet": {"enum": ["cat", "dog"]}}, "required": ["name", "age", "pet"]}
text = '{"name": "Alice Smith", "age": 42, "pet": "cat"}'
ids = tok.encode(text, add_special=False)
def run():
    c = Constraint(tok, schema_to_gbnf(schema))
    per = []
    for i in ids:
        t = time.perf_counter(); c.mask(); c.advance(i); per.append(time.perf_counter() - t)
    return per, c.complete
first, done = run()
again, _ = run()
{"trie_s": trie_s, "tokens": len(ids), "first_ms": [round(1000 * x, 2) for x in first],
 "cached_ms_per_token": 1000 * sum(again) / len(again), "done": done}
""",
        timeout_ms=240_000,
    )
    assert got["done"]
    first = got["first_ms"]
    print(
        f"\n[pyodide masks] trie build {got['trie_s']:.2f} s; first visit per token (ms) {first}; "
        f"mean {sum(first) / len(first):.1f} ms; cached {got['cached_ms_per_token']:.3f} ms/token"
    )
    assert got["cached_ms_per_token"] < 5
