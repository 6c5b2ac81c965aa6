"""Chat templates rendered by webllm_py.tokenizer equal HF transformers' `apply_chat_template` output."""

import os

import pytest

from .tokenizer_helpers import HF_DIR, gguf_metadata, require, smollm2_gguf
from webllm_py.errors import ChatTemplateError
from webllm_py.tokenizer import Tokenizer

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")  # a dev dependency; always installed by scripts/setup.sh

CONVERSATIONS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hi!"}],
    [
        {"role": "system", "content": "Be nice."},
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "Und auf Deutsch? 你好 👋"},
    ],
    [{"role": "user", "content": "  spaces  \n\nand newlines\n"}, {"role": "assistant", "content": ""}],
]

# A template that exercises HF's helpers: tojson (with kwargs), raise_exception, loop controls, generation blocks.
TOOLS_TEMPLATE = (
    "{%- if tools %}<tools>{% for t in tools %}{{ t | tojson }}\n{{ t | tojson(indent=2) }}{% endfor %}</tools>\n"
    "{%- endif %}"
    "{%- for m in messages %}"
    "{%- if m.role not in ['system', 'user', 'assistant', 'tool'] %}{{ raise_exception('bad role ' + m.role) }}"
    "{%- endif %}"
    "{%- if m.role == 'tool' %}{% continue %}{% endif %}"
    "<|{{ m.role }}|>\n"
    "{%- if m.role == 'assistant' %}{% generation %}{{ m.content | trim }}{% endgeneration %}"
    "{%- else %}{{ m.content }}{% endif %}"
    "{%- if m.tool_calls is defined %}{{ m.tool_calls | tojson(sort_keys=true) }}{% endif %}\n"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}<|assistant|>\n{% endif %}"
    "{{ bos_token }}|{{ eos_token }}|{{ strftime_now('%Y') }}"
)
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Wetter <heute> & morgen",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string", "enum": ["Zürich", "東京"]}},
                "required": ["city"],
            },
        },
    }
]
TOOL_MESSAGES = [
    {"role": "user", "content": "Weather in Zürich?"},
    {
        "role": "assistant",
        "content": "  calling  ",
        "tool_calls": [{"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Zürich"}}}],
    },
    {"role": "tool", "content": "sunny"},
]


@pytest.fixture(scope="module")
def hf_smollm2():
    require(HF_DIR / "smollm2" / "tokenizer.json")
    return transformers.AutoTokenizer.from_pretrained(str(HF_DIR / "smollm2"))


@pytest.fixture(scope="module")
def ours_smollm2():
    return Tokenizer.from_gguf_metadata(gguf_metadata(smollm2_gguf()))


@pytest.mark.parametrize("add_generation_prompt", [True, False])
@pytest.mark.parametrize("conv", range(len(CONVERSATIONS)))
def test_smollm2_template_matches_transformers(hf_smollm2, ours_smollm2, conv, add_generation_prompt):
    messages = CONVERSATIONS[conv]
    expected = hf_smollm2.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    got = ours_smollm2.apply_chat_template(messages, add_generation_prompt=add_generation_prompt)
    assert got == expected
    # And the ids: HF's tokenization of the rendered prompt (special tokens parsed) equals ours.
    assert ours_smollm2.encode(got, add_special=False) == hf_smollm2.encode(expected, add_special_tokens=False)


def test_llama3_template_matches_transformers():
    require(HF_DIR / "llama3" / "tokenizer.json")
    hf = transformers.AutoTokenizer.from_pretrained(str(HF_DIR / "llama3"))
    ours = Tokenizer.from_hf(HF_DIR / "llama3" / "tokenizer.json", HF_DIR / "llama3" / "tokenizer_config.json")
    for messages in CONVERSATIONS:
        expected = hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        assert ours.apply_chat_template(messages) == expected
        assert ours.encode(expected, add_special=False) == hf.encode(expected, add_special_tokens=False)


@pytest.mark.parametrize("with_tools", [True, False])
def test_helpers_match_transformers(hf_smollm2, ours_smollm2, with_tools):
    tools = TOOLS if with_tools else None
    expected = hf_smollm2.apply_chat_template(
        TOOL_MESSAGES, tools=tools, chat_template=TOOLS_TEMPLATE, tokenize=False, add_generation_prompt=True
    )
    got = ours_smollm2.apply_chat_template(TOOL_MESSAGES, tools=tools, chat_template=TOOLS_TEMPLATE)
    assert got == expected


def test_template_errors_are_typed(ours_smollm2):
    with pytest.raises(ChatTemplateError, match="bad role"):
        ours_smollm2.apply_chat_template([{"role": "robot", "content": "x"}], chat_template=TOOLS_TEMPLATE)
    with pytest.raises(ChatTemplateError, match="does not compile"):
        ours_smollm2.apply_chat_template(CONVERSATIONS[0], chat_template="{% for %}")
    with pytest.raises(ChatTemplateError):  # the sandbox refuses to mutate the caller's data
        ours_smollm2.apply_chat_template(CONVERSATIONS[0], chat_template="{{ messages.append(1) }}")
    with pytest.raises(ChatTemplateError, match="list of dicts"):
        ours_smollm2.apply_chat_template("hello")


@pytest.mark.parametrize("template", [5, ["{{ x }}"], b"{{ x }}"], ids=repr)
def test_a_chat_template_that_is_not_text_is_a_chat_template_error(ours_smollm2, template):
    """A GGUF's tokenizer.chat_template is whatever type its writer chose: a number or an array reached
    Jinja (TypeError: Can't compile non template nodes) instead of a typed error."""
    with pytest.raises(ChatTemplateError, match="not text"):
        ours_smollm2.apply_chat_template(CONVERSATIONS[0], chat_template=template)
    assert ours_smollm2.apply_chat_template(CONVERSATIONS[0]).startswith("<|im_start|>")  # its own still renders


HOSTILE_TEMPLATES = {
    # Python-level loops: 10^10 empty iterations (Jinja's own range cap is 100,000 per call)
    "nested loops": "{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}",
    # one C-level operation of 400 MB, before any loop
    "repeat": '{{ ("x" * 400000000) | length }}',
    "repeat bytes": '{{ ("x".encode() * 400000000) | length }}',
    "power": "{{ 7 ** 100000000 }}",
    # a value doubled 60 times: 2^60 bytes, by ~ and by +
    "doubling ~": '{% set ns = namespace(v="x") %}{% for i in range(60) %}{% set ns.v = ns.v ~ ns.v %}{% endfor %}',
    "doubling +": "{% set ns = namespace(v=[1]) %}{% for i in range(60) %}{% set ns.v = ns.v + ns.v %}{% endfor %}",
}

# One step of ~400 MB each, made by a filter, a method call, % or printing: caught by the size cap before it
# runs (the checks above saw only *, **, + and ~, and each of these is a single C-level step or a list of
# references that the time budget does not notice).
HOSTILE_STEPS = {
    "center filter": '{{ "x" | center(400000000) }}',
    "indent filter": '{{ ("x\n" * 1000) | indent(400000) }}',
    "replace filter": '{{ ("x" * 1000000) | replace("x", "y" * 400) }}',
    "join filter": '{{ (["y"] * 1000000) | join("x" * 400) }}',
    "join of a generator": '{{ (["y"] * 10000) | map("lower") | join("x" * 40000) }}',
    "format filter": '{{ "%400000000s" | format("x") }}',
    "batch filter": '{{ [1] | batch(1000000, "x" * 400) | list }}',
    "urlize filter": '{{ ("a.co " * 10000) | urlize(target="x" * 40000) }}',
    "wordwrap filter": '{{ ("a " * 20000) | wordwrap(1, wrapstring="x" * 20000) }}',
    "tojson indent": "{{ [[[[[[1]]]]]] | tojson(indent=20000000) }}",
    "% operator": '{{ "%400000000d" % 1 }}',
    "% with *": '{{ "%*d" % (400000000, 1) }}',
    "str.format": '{{ "{:400000000}".format(1) }}',
    "str.format nested": '{{ "{:{}}".format(1, 400000000) }}',
    "str.format_map": '{{ "{a:400000000}".format_map({"a": 1}) }}',
    "str.center": '{{ "x".center(400000000) }}',
    "str.zfill": '{{ "1".zfill(400000000) }}',
    "str.expandtabs": '{{ ("\t" * 1000).expandtabs(400000) }}',
    "str.replace": '{{ ("x" * 1000000).replace("x", "y" * 400) }}',
    "str.join": '{{ ("x" * 400).join(["y"] * 1000000) }}',
    "str.translate": '{{ ("a" * 100000).translate({97: "b" * 4000}) }}',
    "str.translate by a list": '{{ ("a" * 100000).translate(["b" * 4000] * 98) }}',
    "bytes.center": '{{ "x".encode().center(400000000) }}',
    "bytes.join": '{{ ("x".encode() * 400).join(["y".encode()] * 1000000) }}',
    "bytes %": '{{ "%400000000d".encode() % 1 }}',
    # a small list holding one big string many times: printing or joining it makes n times the string
    "repeated reference": '{{ (["y" * 4000] * 100000) | join }}',
    "dict.fromkeys": '{{ {}.fromkeys(range(100000), "x" * 4000) }}',
    # one capped value printed many times: only the text as a whole grows
    "printed in a loop": '{% set s = "x" * 4000000 %}{% for i in range(100) %}{{ s }}{% endfor %}',
}


@pytest.mark.parametrize("name", list(HOSTILE_TEMPLATES))
def test_a_hostile_chat_template_is_stopped_with_a_chat_template_error(ours_smollm2, monkeypatch, name):
    """A model file's template is code from whoever wrote the file: one that loops for hours or builds
    gigabytes hung the worker (or the process); now it is stopped within its time budget or at the first
    value over the size cap, and the tokenizer's own template still renders."""
    import time

    from webllm_py.tokenizer import chat_template

    monkeypatch.setattr(chat_template, "RENDER_SECONDS", 0.5)
    t0 = time.monotonic()
    with pytest.raises(ChatTemplateError, match="ran past|repeats|power|builds a value"):
        ours_smollm2.apply_chat_template(CONVERSATIONS[0], chat_template=HOSTILE_TEMPLATES[name])
    assert time.monotonic() - t0 < 5
    assert ours_smollm2.apply_chat_template(CONVERSATIONS[0]).startswith("<|im_start|>")


@pytest.mark.parametrize("name", list(HOSTILE_STEPS))
def test_a_chat_template_step_that_builds_a_huge_string_is_refused_before_it_runs(ours_smollm2, name):
    """center(400000000), "%400000000d" % 1, a join of a million items with a 400-character separator...: each
    made hundreds of megabytes in one call, which the time budget cannot stop (and in Pyodide's 4 GB heap a few
    of them end the worker). Now each is a ChatTemplateError naming the cap, raised before the step runs."""
    import time

    t0 = time.monotonic()
    with pytest.raises(
        ChatTemplateError, match=r"(would build a value of up to|builds a value of|text grows to) \d+ .*more than"
    ):
        ours_smollm2.apply_chat_template(CONVERSATIONS[0], chat_template=HOSTILE_STEPS[name])
    assert time.monotonic() - t0 < 2
    assert ours_smollm2.apply_chat_template(CONVERSATIONS[0]).startswith("<|im_start|>")


def test_a_conversation_past_any_prompt_is_a_context_overflow(ours_smollm2):
    """A 5 MB message was refused by the template's size cap as a ChatTemplateError ("builds a value of
    5000017 elements"): a client trimming the conversation on ContextOverflowError missed it. The messages'
    own size is checked first."""
    from webllm_py.errors import ContextOverflowError

    with pytest.raises(ContextOverflowError, match="shorten the conversation"):
        ours_smollm2.apply_chat_template([{"role": "user", "content": "word " * 10**6}])
    assert ours_smollm2.apply_chat_template(CONVERSATIONS[0]).startswith("<|im_start|>")
