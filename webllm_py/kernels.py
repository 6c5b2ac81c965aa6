"""WGSL kernels from Jinja2 templates in `shaders/`.

Each template lists its parameters in a header comment. Rendering is strict: a parameter the
template uses but the caller did not give is an error, not an empty string. The GPU layer caches
pipelines by the rendered source, so the same specialisation compiles once per device.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

import jinja2

from .formats.quants import IQ4_NL_VALUES

_HERE = Path(__file__).resolve().parent


def shader_dir() -> Path:
    # In the wheel the templates live in webllm_py/shaders/; in a source checkout in ../shaders/.
    for d in (_HERE / "shaders", _HERE.parent / "shaders"):
        if d.is_dir():
            return d
    raise FileNotFoundError("webllm_py: shader templates not found (expected webllm_py/shaders or ./shaders)")


@lru_cache(maxsize=1)
def _env() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(shader_dir())),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        # Templates never change under a running process; not checking the files' mtimes also lets a
        # Pyodide start-up snapshot (worker.js) keep the templates it compiled.
        auto_reload=False,
    )
    env.globals["iq4nl_values"] = IQ4_NL_VALUES  # format data the IQ4 kernels' lookup table is rendered from
    return env


def compile_templates() -> list[str]:
    """Parse every template now (the worker does this before its start-up snapshot)."""
    names = sorted(p.name for p in shader_dir().glob("*.wgsl.j2"))
    for name in names:
        _env().get_template(name)
    return names


def render(template: str, **params: Any) -> str:
    """Render `shaders/<template>` (".wgsl.j2" may be omitted) with `params`."""
    if not template.endswith(".j2"):
        template += ".wgsl.j2"
    params.setdefault("f16", False)
    params.setdefault("packed", False)  # the KV cache holds f16 pairs in u32s (kv_elem.wgsl.j2)
    params.setdefault("subgroups", False)
    params.setdefault("subgroups_directive", "")
    params.setdefault("cpu_adapter", False)
    # A model asks for the same few kernels once per layer (SmolLM2: 549 calls, 22 distinct), and a
    # render costs ~2 ms natively and ~5-9 ms in Pyodide: 2.7-4.9 s of a browser model load (measured).
    # Memoized when the params are hashable; the key holds each value's type, so 1, 1.0 and True
    # (equal in Python, rendered differently) never share an entry.
    key = tuple((k, type(v), v) for k, v in sorted(params.items()))
    try:
        hash(key)
    except TypeError:
        return _render(template, key)
    return _render_cached(template, key)


def _render(template: str, key: tuple) -> str:
    return _env().get_template(template).render(**{k: v for k, _, v in key})


_render_cached = lru_cache(maxsize=1024)(_render)
