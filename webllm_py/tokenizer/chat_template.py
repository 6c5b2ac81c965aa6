"""Chat templates: the model's own Jinja2 template, rendered the way HF transformers renders it.

HF's `apply_chat_template` uses a sandboxed, immutable Jinja2 environment with trim_blocks and lstrip_blocks,
the loopcontrols extension, a `{% generation %}` block (marks assistant text; rendered as-is here), and three
helpers: `raise_exception(msg)`, `strftime_now(fmt)` and a `tojson` filter that does not HTML-escape.
Templates are compiled once and cached. A template is code from the model file's writer: its render has a time
budget (RENDER_SECONDS) and the values it builds a size cap (MAX_BUILT_LENGTH, counted over everything a value
holds), so a hostile one is a ChatTemplateError, not a hung worker: operators, filters and method calls that can
build a large string in one C-level step (center, indent, replace, join, format and %, wordwrap, tojson's indent,
batch's fill, urlize, str.center/ljust/rjust/zfill/expandtabs/replace/join/translate/format) are checked before
they run, every other filter's and call's result after, and the rendered text before it is joined.
"""

import json
import re
import string
import sys
import time
from datetime import datetime
from functools import lru_cache, update_wrapper

import jinja2
from jinja2 import nodes
from jinja2.compiler import CodeGenerator
from jinja2.ext import Extension
from jinja2.exceptions import SecurityError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from ..errors import ChatTemplateError, ContextOverflowError


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
# loops for hours would hang the worker) and the values it builds a size cap (one C-level step, * or ** or a
# filter like center(10**9), can take minutes or gigabytes before any budget check runs; Pyodide's heap is 4 GB
# at most, shared with the model). Real templates render in milliseconds, far below both.
RENDER_SECONDS = 5.0
MAX_BUILT_LENGTH = 1 << 22  # what one value a template builds may hold in all (see _size): ~1M tokens of text
MAX_EXPONENT = 1024


def _size(value, limit: int = MAX_BUILT_LENGTH) -> int:
    """What `value` holds in all: a string's characters, a container's elements plus what each holds, 1 for
    anything else; counted per reference (as printing or joining it would: [s] * n holds n times s), and
    stopped once past `limit`. A string costs nothing; a container is scanned by C-level passes (filter, map),
    so a list of millions of numbers takes milliseconds, not the seconds a Python loop over it would."""
    if isinstance(value, (str, bytes)):
        return len(value)
    if not isinstance(value, (list, tuple, dict)):
        return 1
    total, stack = 0, [value]
    while stack and total <= limit:
        v = stack.pop()
        if isinstance(v, (str, bytes)):
            total += len(v)
            continue
        if isinstance(v, dict):
            v = [*v.keys(), *v.values()]
        elif not isinstance(v, (list, tuple)):
            total += 1
            continue
        total += len(v)
        kinds = set(map(type, v)) if total <= limit else ()  # one pass; most lists hold one or two types
        for kind in (str, bytes):
            if any(issubclass(k, kind) for k in kinds):
                total += sum(map(len, filter(kind.__instancecheck__, v)))
        for kind in (list, tuple, dict):
            if any(issubclass(k, kind) for k in kinds):
                stack.extend(filter(kind.__instancecheck__, v))
    return total


def _capped(value):
    n = len(value) if isinstance(value, (str, bytes)) else _size(value)  # the common case in one traced line
    if n > MAX_BUILT_LENGTH:
        raise SecurityError(f"the chat template builds a value of {n} elements (more than {MAX_BUILT_LENGTH})")
    return value


def _check(bound: int, what: str):
    """Refuse a step whose result could hold more than MAX_BUILT_LENGTH (`bound`: an upper bound on it)."""
    if bound > MAX_BUILT_LENGTH:
        raise SecurityError(
            f"the chat template's {what} would build a value of up to {bound} elements (more than {MAX_BUILT_LENGTH})"
        )


# Upper bounds on what one C-level string step makes, from its arguments (a few lines of Python each, where the
# step itself could make gigabytes before any check). Arguments of the wrong type make no bound (None): the step
# itself then fails as it would have.
def _int(v) -> int:
    return v if isinstance(v, int) else len(v) if isinstance(v, str) else 0


def _values(table):
    return table.values() if isinstance(table, dict) else table


def _replace_bound(s, old, new, count=-1):
    n = len(s) + 1 if old == "" else s.count(old)
    if count is not None and 0 <= count < n:
        n = count
    return len(s) + n * max(0, len(new) - len(old))


def _join_bound(sep, items):
    return _size(items) + len(sep) * max(0, len(items) - 1)


_PERCENT = re.compile(r"%(?:\([^)]*\))?[-#0 +]*(\*|\d+)?(?:\.(\*|\d+))?")


def _percent_bound(fmt, values):
    """`fmt % values`: each conversion prints at most the largest value plus its width and precision (`*` takes
    them from the values)."""
    if isinstance(fmt, bytes):
        fmt = fmt.decode("latin-1")
    flat = (
        list(values.values()) if isinstance(values, dict) else list(values) if isinstance(values, tuple) else [values]
    )
    biggest = max([_size(v) for v in flat] + [0])
    star = max([v for v in flat if isinstance(v, int)] + [0])
    total = len(fmt)
    for m in _PERCENT.finditer(fmt):
        total += biggest + sum(star if g == "*" else int(g or 0) for g in m.groups())
    return total


def _format_bound(fmt, args, kwargs):
    """`fmt.format(*args, **kwargs)`: each field prints at most the largest argument plus the numbers of its spec
    (a nested {} in a spec takes them from the arguments)."""
    values = list(args) + list(kwargs.values())
    biggest = max([_size(v) for v in values] + [0])
    nested = max([v for v in values if isinstance(v, int)] + [0])
    total = len(fmt)
    for _, field, spec, _ in string.Formatter().parse(fmt):
        if field is not None:
            total += (
                biggest + sum(int(d) for d in re.findall(r"\d+", spec or "")) + (nested if "{" in (spec or "") else 0)
            )
    return total


def _wordwrap_bound(s, width=79, break_long_words=True, wrapstring=None, break_on_hyphens=True):
    lines = min(len(s), len(s.split()) + s.count("\n") + (len(s) // max(width, 1) if break_long_words else 0)) + 1
    return len(s) + lines * len(wrapstring or "\n")


def _json_bound(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    """tojson: the text of x plus, per element, its separators and (with indent) a line indented to its depth."""
    step, sep = _int(indent), sum(len(t) for t in separators or () if isinstance(t, str)) + 2
    total, stack = 0, [(x, 0)]
    while stack and total <= MAX_BUILT_LENGTH:
        v, depth = stack.pop()
        total += (len(v) if isinstance(v, str) else 1) + sep + (depth * step + 1 if step else 0)
        if isinstance(v, dict):
            stack.extend((c, depth + 1) for c in (*v.keys(), *v.values()))
        elif isinstance(v, (list, tuple)):
            stack.extend((c, depth + 1) for c in v)
    return total


# str (and bytes: "x".encode()) methods a template may call (the sandbox allows them) and the bound of each:
# (s, *args, **kwargs) -> int
_STR_METHODS = {
    "center": lambda s, width, *_: max(len(s), _int(width)),
    "ljust": lambda s, width, *_: max(len(s), _int(width)),
    "rjust": lambda s, width, *_: max(len(s), _int(width)),
    "zfill": lambda s, width: max(len(s), _int(width)),
    "expandtabs": lambda s, tabsize=8: len(s) + s.count("\t") * _int(tabsize),
    "replace": _replace_bound,
    "translate": lambda s, table: len(s) * max([1] + [len(v) for v in _values(table) if isinstance(v, str)]),
}

# Filters that can grow a string in one step: name -> bound from the filter's own arguments (after any
# context argument Jinja passes).
_FILTER_BOUNDS = {
    "center": lambda value, width=80: max(len(str(value)), _int(width)),
    "indent": lambda s, width=4, *_, **__: len(str(s)) + (str(s).count("\n") + 1) * _int(width),
    "replace": lambda s, old, new, count=None: _replace_bound(str(s), str(old), str(new), count),
    "join": lambda value, d="", attribute=None: _join_bound(str(d), list(value)),
    "format": lambda value, *args, **kwargs: _percent_bound(str(value), kwargs or tuple(args)),
    "wordwrap": lambda s, *args, **kwargs: _wordwrap_bound(str(s), *args, **kwargs),
    "tojson": _json_bound,
    # the last batch is filled up with linecount - k references to fill_with, in one step
    "batch": lambda value, linecount, fill_with=None: (
        0 if fill_with is None else _int(linecount) * (1 + _size(fill_with))
    ),
    # each URL-like word (3+ characters) becomes a link: the URL twice, the target and rel attributes, the markup
    "urlize": lambda value, trim_url_limit=None, nofollow=False, target=None, rel=None, extra_schemes=None: (
        3 * len(str(value)) + (len(str(value)) // 3 + 1) * (len(str(target or "")) + len(str(rel or "")) + 64)
    ),
}


def _bound(estimate, *args, **kwargs):
    try:
        return estimate(*args, **kwargs)
    except (TypeError, ValueError, AttributeError):
        return None  # arguments the step itself refuses: it fails as it would have


def _checked_filter(name, f):
    """Filter `f` with its result capped, and, for one of _FILTER_BOUNDS, its arguments checked first. A filter
    that Jinja passes a context to keeps its marker (pass_context & co.: an attribute of the function)."""
    estimate = _FILTER_BOUNDS.get(name)
    skip = 1 if getattr(f, "jinja_pass_arg", None) else 0

    def checked(*args, **kwargs):
        if estimate is not None:
            rest = args[skip:]
            if name == "join" and rest and not isinstance(rest[0], (str, list, tuple, dict)):
                rest = (list(rest[0]), *rest[1:])  # a generator: read once, for the bound and the filter
                args = (*args[:skip], *rest)
            bound = _bound(estimate, *rest, **kwargs)
            if bound is not None:
                _check(bound, f"{name} filter")
        return _capped(f(*args, **kwargs))

    return update_wrapper(checked, f)


class _CodeGenerator(CodeGenerator):
    """Jinja's, with every `~` concatenation's result checked by _capped (a loop doubling a string reaches
    gigabytes in ~30 steps, faster than a time budget notices)."""

    def visit_Concat(self, node, frame):
        self.write("environment.capped(")
        super().visit_Concat(node, frame)
        self.write(")")


class _Sandbox(ImmutableSandboxedEnvironment):
    code_generator_class = _CodeGenerator
    intercepted_binops = frozenset(["*", "**", "+", "%"])

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.filters = {name: _checked_filter(name, f) for name, f in self.filters.items()}

    @staticmethod
    def capped(value):
        return _capped(value)

    def call(__self, __context, __obj, *args, **kwargs):  # noqa: N805 (Jinja's names: a template may pass `self=`)
        owner, name = getattr(__obj, "__self__", None), getattr(__obj, "__name__", "")
        if isinstance(owner, (str, bytes)) and (name in _STR_METHODS or name == "join"):
            if name == "join" and args and not isinstance(args[0], (str, list, tuple, dict)):
                args = (list(args[0]), *args[1:])  # a generator: read once, for the bound and the join
            estimate = (lambda s, items: _join_bound(s, list(items))) if name == "join" else _STR_METHODS[name]
            bound = _bound(estimate, owner, *args, **kwargs)
            if bound is not None:
                _check(bound, f"{type(owner).__name__}.{name}")
        return _capped(super().call(__context, __obj, *args, **kwargs))

    def wrap_str_format(self, value):
        """str.format / format_map (the sandbox wraps them when they are looked up): bounded before they run."""
        fmt = super().wrap_str_format(value)
        if fmt is None:
            return None
        s, is_map = value.__self__, value.__name__ == "format_map"

        def checked(*args, **kwargs):
            bound = _bound(_format_bound, s, () if is_map else args, args[0] if is_map and args else kwargs)
            if bound is not None:
                _check(bound, f"str.{value.__name__}")
            return fmt(*args, **kwargs)

        return update_wrapper(checked, value)

    def call_binop(self, context, operator, left, right):
        if operator == "**" and isinstance(right, (int, float)) and abs(right) > MAX_EXPONENT:
            raise SecurityError(f"the chat template raises to the power {right} (more than {MAX_EXPONENT})")
        if operator == "*":
            for seq, n in ((left, right), (right, left)):
                if (
                    isinstance(seq, (str, bytes, list, tuple))
                    and isinstance(n, int)
                    and len(seq) * n > MAX_BUILT_LENGTH
                ):
                    raise SecurityError(f"the chat template repeats a value of {len(seq)} elements {n} times")
                if isinstance(seq, (list, tuple)) and isinstance(n, int) and n > 0:
                    _check(_size(seq) * n, "*")  # [s] * n holds n times s
        if operator == "%" and isinstance(left, (str, bytes)):
            bound = _bound(_percent_bound, left, right)
            if bound is not None:
                _check(bound, "%")
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

    # The text before it is joined: a loop printing one capped value many times adds only references to a
    # list (cheap, under the time budget) that one final join would make gigabytes of.
    limit = MAX_BUILT_LENGTH + 2 * _size(list(variables.values()), 1 << 62)
    before = sys.gettrace()
    sys.settrace(lambda frame, event, arg: line)
    try:
        try:  # Template.render's own steps, with the text's parts kept (references: the budget bounds how many)
            parts = list(compiled.root_render_func(compiled.new_context(variables)))
        except Exception:
            compiled.environment.handle_exception()  # raises it, its traceback pointing into the template
        total = sum(map(len, parts))
        if total > limit:
            raise SecurityError(f"the chat template's text grows to {total} characters (more than {limit})")
        return "".join(parts)
    finally:
        sys.settrace(before)


@lru_cache(maxsize=16)
def _compile(template: str):
    env = _Sandbox(trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationBlock, "jinja2.ext.loopcontrols"])
    env.filters["tojson"] = _checked_filter("tojson", _tojson)
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
    messages = list(messages)
    if _size(messages) > MAX_BUILT_LENGTH:  # the conversation itself, before the template (which would fail on it)
        raise ContextOverflowError(
            f"The messages hold over {MAX_BUILT_LENGTH} characters (~1M tokens), more than a prompt can: shorten "
            "the conversation."
        )
    compiled = _compile(template)
    try:
        return _render_within(
            compiled,
            RENDER_SECONDS,
            messages=messages,
            tools=tools,
            documents=documents,
            add_generation_prompt=add_generation_prompt,
            **variables,
        )
    except jinja2.TemplateError as e:
        raise ChatTemplateError(f"the chat template failed: {e}") from e
    except Exception as e:  # templates index and call freely; any failure is a template failure to the caller
        raise ChatTemplateError(f"the chat template failed: {type(e).__name__}: {e}") from e
