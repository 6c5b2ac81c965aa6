"""Build the pure `webllm_py` wheel that the Pyodide worker installs.

A wheel is a zip with a fixed layout (PEP 427): the package files, then `<dist>.dist-info/` holding
METADATA, WHEEL and RECORD (every file's sha256 and size). It is written here with zipfile rather than
through a build backend so that `serve` starts in well under a second and needs nothing installed.
The Jinja2 kernel templates live at the top of the checkout (`shaders/`); inside the wheel they go
to `webllm_py/shaders/`, where `webllm_py.kernels.shader_dir()` looks first.
"""

from __future__ import annotations

import base64
import hashlib
import re
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent  # the source checkout
PACKAGE = ROOT / "webllm_py"
SHADERS = ROOT / "shaders"
NAME = "webllm_py"
# Fixed timestamp: the same sources give the same wheel bytes.
_ZIP_TIME = (2020, 1, 1, 0, 0, 0)


def project_version() -> str:
    """The version from pyproject.toml (a regex: tomllib is 3.11+, and this must not need more)."""
    text = (ROOT / "pyproject.toml").read_text()
    m = re.search(r'^version\s*=\s*"([^"]+)"', text, re.M)
    return m.group(1) if m else "0.0.0"


def wheel_name(version: str | None = None) -> str:
    return f"{NAME}-{version or project_version()}-py3-none-any.whl"


# Modules that run only on the host (CPython), never in Pyodide: the dev server, the static-site and
# wheel builders, the JupyterLite build, the Dawn host (it starts Node; the code it runs inside Pyodide
# is the wheel's) and the CLI. They stay out of the browser wheel; tests/test_imports.py checks that no
# module the wheel holds imports one. (bench.py stays: bench.html and the Dawn host run it in Pyodide.)
HOST_ONLY = frozenset({"__main__.py", "serve.py", "static_site.py", "wheel.py", "jupyterlite.py", "dawn.py"})


def package_files() -> list[tuple[str, Path]]:
    """(path inside the wheel, path on disk) for every file the wheel holds, sorted."""
    # Every file of the package, not only *.py: data tables (e.g. tokenizer data) must come along.
    files = [
        (f"{NAME}/{p.relative_to(PACKAGE).as_posix()}", p)
        for p in PACKAGE.rglob("*")
        if p.is_file()
        and "__pycache__" not in p.parts
        and p.suffix not in (".pyc", ".pyo", ".tmp")
        and not p.name.startswith(".")
        and p.relative_to(PACKAGE).as_posix() not in HOST_ONLY
    ]
    files += [(f"{NAME}/shaders/{p.name}", p) for p in SHADERS.glob("*.wgsl.j2")]
    return sorted(files)


def _record_line(arcname: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{arcname},sha256={digest},{len(data)}"


def build_wheel(out_dir: Path) -> Path:
    """Write the wheel into `out_dir` (replacing an older one of the same name) and return its path."""
    version = project_version()
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / wheel_name(version)
    info = f"{NAME}-{version}.dist-info"
    entries: list[tuple[str, bytes]] = [(arc, p.read_bytes()) for arc, p in package_files()]
    entries.append(
        (
            f"{info}/METADATA",
            (
                "Metadata-Version: 2.1\n"
                f"Name: {NAME}\n"
                f"Version: {version}\n"
                "Summary: LLM inference in the browser: Python in Pyodide drives WebGPU\n"
                "Requires-Dist: jinja2>=3.1\n"
            ).encode(),
        )
    )
    entries.append(
        (
            f"{info}/WHEEL",
            ("Wheel-Version: 1.0\nGenerator: webllm_py.wheel\nRoot-Is-Purelib: true\nTag: py3-none-any\n").encode(),
        )
    )
    entries.append((f"{info}/top_level.txt", f"{NAME}\n".encode()))
    record = [_record_line(arc, data) for arc, data in entries] + [f"{info}/RECORD,,"]
    entries.append((f"{info}/RECORD", ("\n".join(record) + "\n").encode()))

    tmp = path.with_suffix(".tmp")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as z:
        for arc, data in entries:
            zi = zipfile.ZipInfo(arc, _ZIP_TIME)
            zi.compress_type = zipfile.ZIP_DEFLATED
            zi.external_attr = 0o644 << 16
            z.writestr(zi, data)
    tmp.replace(path)  # atomic: a request served meanwhile sees the old or the new wheel, never half
    return path
