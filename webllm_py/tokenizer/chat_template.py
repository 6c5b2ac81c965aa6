"""Chat templates: the model's own Jinja2 template, rendered the way HF transformers renders it.

HF's `apply_chat_template` uses a sandboxed, immutable Jinja2 environment with trim_blocks and lstrip_blocks,
the loopcontrols extension, a `{% generation %}` block (marks assistant text; rendered as-is here), and three
helpers: `raise_exception(msg)`, `strftime_now(fmt)` and a `tojson` filter that does not HTML-escape.
Templates are compiled once and cached.
"""

import json
from datetime import datetime
from functools import lru_cache

import jinja2
from jinja2 import nodes
from jinja2.ext import Extension
from jinja2.sandbox import ImmutableSandboxedEnvironment

from ..errors import ChatTemplateError


def _raise_exception(message):
    raise jinja2.exceptions.TemplateError(message)


def _strftime_now(fmt):
    return datetime.now().strftime(fmt)


def _tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    # HF's version: json.dumps, no HTML escaping (Jinja's built-in escapes < > & ').
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


class _GenerationBlock(Extension):
    """`{% generation %}...{% endgeneration %}`: HF uses it to find assistant spans; here it renders its body."""

    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return nodes.CallBlock(self.call_method("_render", []), [], [], body).set_lineno(lineno)

    def _render(self, caller):
        return caller()


@lru_cache(maxsize=16)
def _compile(template: str):
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationBlock, "jinja2.ext.loopcontrols"]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    try:
        return env.from_string(template)
    except jinja2.TemplateError as e:
        raise ChatTemplateError(f"the chat template does not compile: {e}") from e


def render_chat_template(
    template: str, messages, add_generation_prompt: bool = True, tools=None, documents=None, **variables
) -> str:
    """Render `template` for `messages` (list of {"role", "content", ...}). `variables` typically holds
    bos_token / eos_token and template-specific switches (e.g. enable_thinking)."""
    if not isinstance(messages, (list, tuple)) or not all(isinstance(m, dict) for m in messages):
        raise ChatTemplateError("messages must be a list of dicts like {'role': 'user', 'content': '...'}")
    if not isinstance(template, str):  # a model file's tokenizer.chat_template holds whatever its writer put there
        raise ChatTemplateError(
            f"the chat template is not text (a {type(template).__name__}): the model's tokenizer.chat_template "
            "is malformed; pass chat_template='...' explicitly"
        )
    compiled = _compile(template)
    try:
        return compiled.render(
            messages=list(messages),
            tools=tools,
            documents=documents,
            add_generation_prompt=add_generation_prompt,
            **variables,
        )
    except jinja2.TemplateError as e:
        raise ChatTemplateError(f"the chat template failed: {e}") from e
    except Exception as e:  # templates index and call freely; any failure is a template failure to the caller
        raise ChatTemplateError(f"the chat template failed: {type(e).__name__}: {e}") from e
