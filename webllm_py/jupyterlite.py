"""The JupyterLite site: JupyterLab in the browser with a Pyodide kernel that imports webllm_py.

`build_site(out_dir)` runs `jupyter lite build` (jupyterlite-core and jupyterlite-pyodide-kernel, in
their own venv under build/jupyterlite/, offline: they ship the JupyterLab apps and the kernel
extension) on the lite dir jupyterlite/ of this repo (its jupyter-lite.json and the notebook).
The site is meant for the root of the origin that also serves /pyodide/ and /wheels/
(`python -m webllm_py serve`), so the kernel fetches nothing from a CDN:

- `pyodideUrl` is the npm Pyodide under /pyodide/ (314.0.7; the kernel names 314.0.6, and the JS API
  it calls - loadPyodide, loadPackage, runPythonAsync - is the same in both).
- `lockFileURL` is /wheels/pyodide-lock.json, written by `lock_file()`: npm Pyodide's lock file
  ships no wheels and its hashes are those of Pyodide's own builds, so the served one lists only the
  wheels under /wheels/ (PyPI's, fetched by scripts/fetch_pyodide_wheels.py, plus the webllm_py
  wheel) with their own sha256. The kernel loads micropip, ipython, jedi and comm through it, and
  preloads webllm_py (with jinja2, markupsafe) so `import webllm_py` works in the first cell.

`fix_coincident()` then mends two defects of the kernel's bundled coincident 1.2.3 (the SharedArrayBuffer
channel of a cross-origin isolated page, which carries the kernel's /drive file calls, input() and the
kernel's own requests) in the built site's copy of the kernel extension: see COINCIDENT_MENDS.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import tempfile
import zipfile
from pathlib import Path

from .wheel import ROOT

BUILD = ROOT / "build"
LITE_DIR = ROOT / "jupyterlite"  # jupyter-lite.json + files/ (the notebook)
VENV = BUILD / "jupyterlite" / "venv"  # jupyterlite-core, jupyterlite-pyodide-kernel
SITE = BUILD / "jupyterlite" / "site"  # what setup builds and serve serves
NPM_LOCK = BUILD / "vendor" / "node_modules" / "pyodide" / "pyodide-lock.json"

# Requirements the npm lock file does not state (IPython 9 imports ipython_pygments_lexers; the
# kernel's ipykernel shim needs comm, which npm Pyodide does not list at all).
EXTRA_DEPENDS = {"ipython": ["ipython-pygments-lexers"], "webllm-py": ["jinja2"], "jinja2": ["markupsafe"]}


# coincident 1.2.3's reply, second step: the answering side writes the JSON reply into the waiting side's
# SharedArrayBuffer as UTF-16 code units, then notifies. The waiting side blocks with Atomics.wait(sb, 0, 0)
# and takes "index 0 is not 0" as "the reply is there" - but index 0 holds the first two code units, so
# a waiter that reaches its wait while the loop is still writing (it posted its request, then was
# descheduled for a moment) returns at once and decodes a reply cut short: the unwritten rest is U+0000,
# and JSON.parse fails ("Bad control character in string literal"), a fatal error for Pyodide when the
# call was a /drive stat. Minified: `for(let V=new U16(SB.buffer),I=0;I<S.length;I++)V[I]=S.charCodeAt(I)`.
COINCIDENT_REPLY_WRITE = re.compile(
    r"for\(let (?P<v>[\w$]+)=new (?P<u16>[\w$]+)\((?P<sb>[\w$]+)\.buffer\),(?P<i>[\w$]+)=0;"
    r"(?P=i)<(?P<s>[\w$]+)\.length;(?P=i)\+\+\)(?P=v)\[(?P=i)\]=(?P=s)\.charCodeAt\((?P=i)\)"
)
# The mended loop: code units 2.. first, then the first two in one Atomics.store, so index 0 turns non-zero
# only when the whole reply is written (and the store publishes the plain writes before it). This is what
# coincident 2+ does with a separate ready flag; jupyterlite-pyodide-kernel takes coincident 4 in 0.9.
COINCIDENT_REPLY_WRITE_FIXED = (
    "{{let {v}=new {u16}({sb}.buffer),{i}=2,$wl_n={s}.length,$wl_h=new {u16}(2);"
    "for(;{i}<$wl_n;{i}++){v}[{i}]={s}.charCodeAt({i});"
    "$wl_h[0]={s}.charCodeAt(0);$wl_h[1]=$wl_n>1?{s}.charCodeAt(1):0;"
    "Atomics.store({sb},0,new Int32Array($wl_h.buffer)[0])}}"
)
# coincident 1.2.3's main thread waits for the worker with `waitAsync(sb, 0)` and calls `.value.then` on what
# it returns. When index 0 is already non-zero (the worker answered between the post and the wait: the
# main thread descheduled for a moment, most likely in the reply's second step, which the worker answers
# at once), Atomics.waitAsync returns {async: false, value: "not-equal"}, a string: TypeError
# "A(...).value.then is not a function", and the kernel's request (execute, complete, inspect, comm_*)
# rejects after the worker did it - no execute_reply, no idle status: the cell stays [*]. Minified:
# `A=(e,t)=>e?c(t,0):(...sync wait...)`. The mend wraps the value, so a wait that is already over is a
# resolved promise: index 0 turns non-zero only when the step is done (sb[1] set, or the reply written by
# the mended loop above), as it is when the wait resolves with "ok".
COINCIDENT_WAIT_ASYNC = re.compile(
    r"(?P<f>[\w$]+)=\((?P<a>[\w$]+),(?P<sb>[\w$]+)\)=>(?P=a)\?(?P<wa>[\w$]+)\((?P=sb),0\):\("
)
COINCIDENT_WAIT_ASYNC_FIXED = "{f}=({a},{sb})=>{a}?{{value:Promise.resolve({wa}({sb},0).value)}}:("
# coincident 1.2.3's reply, first step: the answering side sets sb[1] (the reply's length) and then index 0
# with plain writes. Woken by notify, the waiter is ordered after both; a waiter that finds index 0 already
# set (the waitAsync mend above, or the worker's Atomics.wait returning "not-equal") is ordered after them
# only if index 0 is written with Atomics.store, or it may read length 0 (a reply taken as undefined) on a
# CPU that reorders stores (ARM). Minified: `Error(`Unsupported action: ${e}`);u[0]=1}else{`.
COINCIDENT_READY_FLAG = re.compile(
    r"(?P<pre>Error\(`Unsupported action: \$\{[\w$]+\}`\);)(?P<sb>[\w$]+)\[0\]=1\}else\{"
)
COINCIDENT_READY_FLAG_FIXED = "{pre}Atomics.store({sb},0,1)}}else{{"
# The mends: (what, pattern, replacement with the pattern's groups, a text only the replacement has). Each
# must be found exactly once in the main thread's chunk and once in coincident.worker.*.js.
COINCIDENT_MENDS = (
    ("reply write", COINCIDENT_REPLY_WRITE, COINCIDENT_REPLY_WRITE_FIXED, "new Int32Array($wl_h.buffer)[0])"),
    ("waitAsync result", COINCIDENT_WAIT_ASYNC, COINCIDENT_WAIT_ASYNC_FIXED, "{value:Promise.resolve("),
    ("length flag", COINCIDENT_READY_FLAG, COINCIDENT_READY_FLAG_FIXED, ",0,1)}else{"),
)
KERNEL_EXTENSION = Path("extensions") / "@jupyterlite" / "pyodide-kernel-extension" / "static"


class JupyterLiteError(RuntimeError):
    """The JupyterLite site cannot be built (its venv is missing, or `jupyter lite build` failed)."""


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _top_level(wheel: Path) -> list[str]:
    """The importable top-level names in a wheel (npm's lock has some wrong, e.g. 'matplotlib-inline')."""
    with zipfile.ZipFile(wheel) as z:
        tops = {n.split("/")[0].removesuffix(".py") for n in z.namelist()}
    return sorted(t for t in tops if not t.endswith((".dist-info", ".data")) and t.isidentifier())


def lock_file(wheels: dict[str, Path], npm_lock: Path = NPM_LOCK) -> dict:
    """A pyodide-lock.json for the pure wheels in `wheels` (file name -> path), relative file names:
    Pyodide resolves them against the lock file's own URL. Dependencies come from npm Pyodide's lock
    (plus EXTRA_DEPENDS); one that is not among `wheels` is an error, not a silent CDN fetch."""
    base = json.loads(npm_lock.read_text())
    npm = {_normalize(k): v for k, v in base["packages"].items()}
    packages = {}
    for fname, path in sorted(wheels.items()):
        name = _normalize(fname.split("-")[0])
        version = fname.split("-")[1]
        known = npm.get(name, {})
        packages[name] = {
            "name": name,
            "version": version,
            "file_name": fname,
            "install_dir": "site",
            "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
            "package_type": "package",
            "imports": _top_level(path),
            "depends": sorted({_normalize(d) for d in known.get("depends", []) + EXTRA_DEPENDS.get(name, [])}),
            "unvendored_tests": False,
        }
    missing = {d for p in packages.values() for d in p["depends"] if d not in packages}
    if missing:
        raise JupyterLiteError(f"wheels missing for the kernel's lock file: {sorted(missing)} (run ./scripts/setup.sh)")
    return {"info": base["info"], "packages": packages}


def build_site(out_dir: Path, lite_dir: Path = LITE_DIR, venv: Path = VENV) -> Path:
    """Build the JupyterLite site into out_dir (replaced); offline, a few seconds."""
    jupyter = venv / "bin" / "jupyter"
    if not jupyter.is_file():
        raise JupyterLiteError(f"JupyterLite is not installed at {venv}: run ./scripts/setup.sh")
    out_dir = Path(out_dir).resolve()
    if out_dir.exists():
        shutil.rmtree(out_dir)
    with tempfile.TemporaryDirectory() as tmp:  # the build leaves its doit state in the lite dir
        work = Path(tmp) / "lite"
        shutil.copytree(lite_dir, work)
        r = subprocess.run(
            [str(jupyter), "lite", "build", "--output-dir", str(out_dir)], cwd=work, capture_output=True, text=True
        )
    if r.returncode != 0 or not (out_dir / "jupyter-lite.json").is_file():
        raise JupyterLiteError(f"jupyter lite build failed ({r.returncode}): {(r.stderr or r.stdout)[-2000:]}")
    fix_coincident(out_dir)
    return out_dir


def mend(pattern: re.Pattern[str], fixed: str, text: str) -> tuple[str, int]:
    """text with each match of one of COINCIDENT_MENDS' patterns replaced by its mended form (the replacement
    formatted with the match's named groups: the minifier's names), and how many there were."""
    return pattern.subn(lambda m: fixed.format(**m.groupdict()), text)


def fix_coincident(site: Path) -> list[Path]:
    """Apply COINCIDENT_MENDS to the kernel extension of a built site: each once in the main thread's copy
    of coincident (it answers the worker's /drive, input() and log calls, and waits for the kernel's
    execute, complete, ... requests) and once in the worker's. The files that changed. Any other count of
    matches (a kernel that bundles another coincident) is an error: look at the new bundle, and drop this
    step once it waits on a flag of its own and handles a settled waitAsync (coincident 2+)."""
    files = {js: js.read_text(encoding="utf-8") for js in sorted((Path(site) / KERNEL_EXTENSION).glob("*.js"))}
    changed = set()
    for what, pattern, fixed, _ in COINCIDENT_MENDS:
        counts = {}
        for js, text in files.items():
            files[js], n = mend(pattern, fixed, text)
            if n:
                counts[js.name] = n
                changed.add(js)
        names = sorted(counts)
        if sum(counts.values()) != 2 or len(names) != 2 or sum(x.startswith("coincident.worker.") for x in names) != 1:
            raise JupyterLiteError(
                f"coincident's {what} found {sum(counts.values())} times in {names} under {KERNEL_EXTENSION}"
                " (expected once in the main thread's chunk and once in coincident.worker.*.js):"
                " the kernel's bundle changed; see jupyterlite.fix_coincident"
            )
    for js in sorted(changed):
        js.write_text(files[js], encoding="utf-8")
    return sorted(changed)


def main(argv: list[str] | None = None) -> int:
    import sys

    args = sys.argv[1:] if argv is None else argv
    out = Path(args[0]) if args else SITE
    try:
        build_site(out)
    except JupyterLiteError as e:
        print(f"jupyterlite: {e}", file=sys.stderr)
        return 1
    print(f"jupyterlite: site built in {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
