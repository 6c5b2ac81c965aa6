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

_HERE = Path(__file__).resolve().parent


def shader_dir() -> Path:
    # In the wheel the templates live in webllm_py/shaders/; in a source checkout in ../shaders/.
    for d in (_HERE / "shaders", _HERE.parent / "shaders"):
        if d.is_dir():
            return d
    raise FileNotFoundError("webllm_py: shader templates not found (expected webllm_py/shaders or ./shaders)")


@lru_cache(maxsize=1)
def _env() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(shader_dir())),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )


def render(template: str, **params: Any) -> str:
    """Render `shaders/<template>` (".wgsl.j2" may be omitted) with `params`."""
    if not template.endswith(".j2"):
        template += ".wgsl.j2"
    params.setdefault("f16", False)
    params.setdefault("subgroups", False)
    params.setdefault("subgroups_directive", "")
    return _env().get_template(template).render(**params)
