"""Fetch the pure-Python wheels the Pyodide worker installs, into a local folder (idempotent).

Pyodide's npm package holds only the interpreter and stdlib, and its CDN is not reachable, so the
wheels come from PyPI. markupsafe has no pure wheel on PyPI: its sdist built with no C compiler
falls back to a pure `py3-none-any` wheel, which works under Pyodide.
"""

import os
import subprocess
import sys
from pathlib import Path

PURE = ["jinja2==3.1.6", "micropip==0.11.1", "packaging==26.1"]
# What the JupyterLite Pyodide kernel loads when it starts (ipython and the packages it imports;
# comm for the ipykernel shim): the versions of npm Pyodide's pyodide-lock.json, as PyPI ships them.
# webllm_py/jupyterlite.py writes the lock file that points the kernel at them.
KERNEL = [
    "ipython==9.12.0",
    "ipython-pygments-lexers==1.1.1",
    "asttokens==3.0.1",
    "decorator==5.2.1",
    "executing==2.2.1",
    "matplotlib-inline==0.2.1",
    "prompt-toolkit==3.0.52",
    "pure-eval==0.2.3",
    "pygments==2.20.0",
    "six==1.17.0",
    "stack-data==0.6.3",
    "traitlets==5.14.3",
    "wcwidth==0.6.0",
    "jedi==0.19.2",
    "parso==0.8.6",
    "comm==0.2.3",
]
MARKUPSAFE = "markupsafe==3.0.3"


def have(dest: Path, prefix: str) -> bool:
    return any(p.name.lower().startswith(prefix) for p in dest.glob("*.whl"))


def main(dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    pip = [sys.executable, "-m", "pip", "-q"]
    for spec in PURE + KERNEL:
        name = spec.split("==")[0].replace("-", "_")
        if not have(dest, name + "-"):
            subprocess.check_call(
                pip
                + ["download", "--no-deps", "--only-binary=:all:", "--python-version", "3.14", "-d", str(dest), spec]
            )
    if not have(dest, "markupsafe-"):
        env = dict(os.environ, CC="/bin/false")
        subprocess.check_call(pip + ["wheel", "--no-deps", "--no-binary=:all:", "-w", str(dest), MARKUPSAFE], env=env)
    names = sorted(p.name for p in dest.glob("*.whl"))
    bad = [n for n in names if not n.endswith("-none-any.whl")]
    if bad:
        raise SystemExit(f"not pure wheels, Pyodide cannot install them: {bad}")
    print("pyodide wheels:", ", ".join(names))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
