"""Chat templates: the model's own Jinja2 template, rendered the way HF transformers renders it.

HF's `apply_chat_template` uses a sandboxed, immutable Jinja2 environment with trim_blocks and lstrip_blocks,
the loopcontrols extension, a `{% generation %}` block (marks assistant text; rendered as-is here), and three
helpers: `raise_exception(msg)`, `strftime_now(fmt)` and a `tojson` filter that does not HTML-escape.
Templates are compiled once and cached. A template is code from the model file's writer: its render has a time
budget (RENDER_SECONDS) and the values it builds a size cap (MAX_BUILT_LENGTH), so a hostile one is a
ChatTemplateError, not a hung worker. Not capped: filters that grow a string (center, indent, replace) other than
through the loops the time budget stops.
"""

import json
import sys
import time
from datetime import datetime
from functools import lru_cache

import jinja2
from jinja2 import nodes
from jinja2.compiler import CodeGenerator
from jinja2.ext import Extension
from jinja2.exceptions import SecurityError
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


# A model file's template is code from whoever wrote the file: its render gets a time budget (a template that
# loops for hours would hang the worker) and values built by * or ** are capped (one such operation can take
# minutes or gigabytes before any budget check runs). Real templates render in milliseconds.
RENDER_SECONDS = 5.0
MAX_BUILT_LENGTH = 1 << 22  # elements of a string or list a template makes by repeating one
MAX_EXPONENT = 1024


def _capped(value):
    if isinstance(value, (str, list, tuple)) and len(value) > MAX_BUILT_LENGTH:
        raise SecurityError(f"the chat template builds a value of {len(value)} elements (more than {MAX_BUILT_LENGTH})")
    return value


class _CodeGenerator(CodeGenerator):
    """Jinja's, with every `~` concatenation's result checked by _capped (a loop doubling a string reaches
    gigabytes in ~30 steps, faster than a time budget notices)."""

    def visit_Concat(self, node, frame):
        self.write("environment.capped(")
        super().visit_Concat(node, frame)
        self.write(")")


class _Sandbox(ImmutableSandboxedEnvironment):
    code_generator_class = _CodeGenerator
    intercepted_binops = frozenset(["*", "**", "+"])

    @staticmethod
    def capped(value):
        return _capped(value)

    def call_binop(self, context, operator, left, right):
        if operator == "**" and isinstance(right, (int, float)) and abs(right) > MAX_EXPONENT:
            raise SecurityError(f"the chat template raises to the power {right} (more than {MAX_EXPONENT})")
        if operator == "*":
            for seq, n in ((left, right), (right, left)):
                if isinstance(seq, (str, list, tuple)) and isinstance(n, int) and len(seq) * n > MAX_BUILT_LENGTH:
                    raise SecurityError(f"the chat template repeats a value of {len(seq)} elements {n} times")
        return _capped(super().call_binop(context, operator, left, right))


class _OverBudget(SecurityError):
    pass


def _render_within(compiled, seconds: float, **variables) -> str:
    """compiled.render(**variables), stopped with _OverBudget once it has run `seconds`: a line tracer checks the
    clock every 1024 lines of the template's Python (Jinja compiles templates to Python; the tracer costs a
    few x on a render of milliseconds). The caller's own tracer (a debugger, coverage) is put back after."""
    deadline = time.monotonic() + seconds
    lines = 0

    def line(frame, event, arg):
        nonlocal lines
        lines += 1
        if not lines & 1023 and time.monotonic() > deadline:
            raise _OverBudget(f"the chat template ran past {seconds:g} s")
        return line

    before = sys.gettrace()
    sys.settrace(lambda frame, event, arg: line)
    try:
        return compiled.render(**variables)
    finally:
        sys.settrace(before)


@lru_cache(maxsize=16)
def _compile(template: str):
    env = _Sandbox(trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationBlock, "jinja2.ext.loopcontrols"])
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
        return _render_within(
            compiled,
            RENDER_SECONDS,
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
