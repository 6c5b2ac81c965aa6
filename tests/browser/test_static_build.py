"""`python -m webllm_py build OUTDIR`: the static folder's layout and contents, checked on CPython
against the sources (static/, npm's Pyodide, the wheel as serve builds it, hashlib over the models),
and the CLI's one-line errors. The browser side (the build answering from a plain http.server) is in
test_browser_embed.py."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from webllm_py import serve, static_site, wheel

from ..gguf_models import minimal_gguf


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> list[Path]:
    d = tmp_path_factory.mktemp("models")
    return [minimal_gguf(d / "a.gguf", 512), minimal_gguf(d / "b.gguf", 256, start=1000)]


@pytest.fixture(scope="module")
def built(models, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("out") / "site"
    static_site.build(out, models)
    return out


def test_static_files_are_copied_as_they_are(built):
    for p in serve.STATIC.iterdir():
        if p.is_file():
            assert (built / p.name).read_bytes() == p.read_bytes(), p.name


def test_only_the_pyodide_files_the_worker_loads(built):
    assert sorted(p.name for p in (built / "pyodide").iterdir()) == sorted(static_site.PYODIDE_FILES)
    for name in static_site.PYODIDE_FILES:
        assert (built / "pyodide" / name).read_bytes() == (serve.PYODIDE / name).read_bytes()


def test_wheels_as_serve_builds_them_with_a_relative_index(built, tmp_path):
    index = json.loads((built / "wheels" / "index.json").read_text())
    by_package = {e["package"]: e for e in index}
    assert {"jinja2", "markupsafe", "webllm_py"} <= set(by_package)
    for e in index:  # relative to index.json, so the folder can live anywhere on a site
        assert e["url"] == e["name"] and (built / "wheels" / e["url"]).is_file()
    ours = built / "wheels" / by_package["webllm_py"]["name"]
    assert ours.read_bytes() == wheel.build_wheel(tmp_path).read_bytes()
    vendor = sorted(p.name for p in serve.VENDOR_WHEELS.glob("*.whl"))
    assert sorted(e["name"] for e in index) == sorted(vendor + [ours.name])


def test_models_with_size_and_sha256(built, models):
    index = json.loads((built / "models" / "index.json").read_text())
    want = [
        {"name": m.name, "url": m.name, "size": m.stat().st_size, "sha256": hashlib.sha256(m.read_bytes()).hexdigest()}
        for m in models
    ]
    assert index == want
    for m in models:
        assert (built / "models" / m.name).read_bytes() == m.read_bytes()
    manifest = json.loads((built / static_site.MARKER).read_text())
    assert manifest["models"] == [{k: e[k] for k in ("name", "size", "sha256")} for e in want]


def test_rebuild_replaces_an_earlier_build(models, tmp_path):
    out = tmp_path / "site"
    static_site.build(out, models)
    (out / "stale.js").write_text("old")
    static_site.build(out, [])
    assert not (out / "stale.js").exists() and not (out / "models" / "a.gguf").exists()
    assert json.loads((out / "models" / "index.json").read_text()) == []
    assert not list(tmp_path.glob(".site.*"))  # no temporary folder left behind


def cli(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "webllm_py", "build", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
    )


def one_line_error(r, *words):
    """The form every command's errors take (webllm_py/__main__.py): `error: <Type>: ...`, exit status 1."""
    assert r.returncode == 1 and r.stdout == "", (r.returncode, r.stdout)
    assert r.stderr.startswith("error: "), r.stderr  # it said "webllm_py build: ..." and exited 2
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, r.stderr
    assert all(w in r.stderr for w in words), r.stderr


def test_cli_refuses_a_folder_it_did_not_write_and_leaves_it_alone(tmp_path):
    (tmp_path / "mine.txt").write_text("keep")
    one_line_error(cli(tmp_path, "--no-models"), str(tmp_path), "not empty")
    assert [p.name for p in tmp_path.iterdir()] == ["mine.txt"]
    one_line_error(cli(tmp_path / "mine.txt", "--no-models"), "is a file")
    one_line_error(cli(serve.STATIC / "out", "--no-models"), "static/")


def test_cli_refuses_an_empty_outdir_and_leaves_the_working_folder_alone(tmp_path, models):
    """`build "$OUT"` with OUT unset is `build ""`, which Path reads as ".": run inside an earlier build, it
    replaced that build (the working folder) with a new one."""
    site = tmp_path / "site"
    static_site.build(site, models)
    (site / "mine.txt").write_text("keep")
    one_line_error(cli("", "--no-models", cwd=site), "OUTDIR is empty")
    assert (site / "mine.txt").read_text() == "keep" and (site / "models" / "a.gguf").exists()


def test_cli_missing_model_writes_nothing(tmp_path):
    one_line_error(cli(tmp_path / "site", "--model", tmp_path / "nope.gguf"), "model file not found", "nope.gguf")
    assert not (tmp_path / "site").exists()
    (tmp_path / "hf").mkdir()  # a folder (e.g. a Hugging Face checkpoint) is not "not found"
    one_line_error(cli(tmp_path / "site", "--model", tmp_path / "hf"), "is a folder", ".gguf")
    assert not (tmp_path / "site").exists()


@pytest.mark.parametrize(
    "content,says",
    [
        (b"", "is empty"),
        (b"GGU", "truncated or corrupt"),
        (b"<!doctype html><title>404</title>", "not a GGUF file"),
        (b"PK\x03\x04zip", "not a GGUF file"),
    ],
)
def test_cli_refuses_a_model_that_is_not_gguf_and_writes_nothing(tmp_path, content, says):
    """A page would download such a file, cache it, and only then fail on it: the build refuses it."""
    (tmp_path / "m.gguf").write_bytes(content)
    one_line_error(cli(tmp_path / "site", "--model", tmp_path / "m.gguf"), "m.gguf", says)
    assert not (tmp_path / "site").exists()


@pytest.mark.parametrize("name", ["m#1.gguf", "m?.gguf", "m%41.gguf"])
def test_cli_refuses_a_model_name_a_url_cannot_carry_and_writes_nothing(tmp_path, name):
    """Pages load a served model by its name (models/<name>, static/modelurl.js): in a URL '#' starts the
    fragment, '?' the query and '%' an escape, so such a file was listed but could never be loaded."""
    minimal_gguf(tmp_path / name, 16)
    one_line_error(cli(tmp_path / "site", "--model", tmp_path / name), name, "rename")
    assert not (tmp_path / "site").exists()
    # What a URL can carry as it is (spaces and parentheses are percent-encoded the same way on both sides).
    minimal_gguf(tmp_path / "m (1).gguf", 16)
    assert cli(tmp_path / "site", "--model", tmp_path / "m (1).gguf").returncode == 0


def test_cli_refuses_two_models_of_one_name(tmp_path, models):
    """models/<name> holds one file: a second of the same name replaced the first in the listing silently."""
    (tmp_path / "other").mkdir()
    minimal_gguf(tmp_path / "other" / "a.gguf", 16)
    one_line_error(cli(tmp_path / "site", "--model", models[0], tmp_path / "other" / "a.gguf"), "a.gguf", "twice")
    assert not (tmp_path / "site").exists()
    assert cli(tmp_path / "site", "--model", models[0], models[0]).returncode == 0  # the same file twice: once
    assert [m["name"] for m in json.loads((tmp_path / "site" / "models" / "index.json").read_text())] == ["a.gguf"]


def test_cli_writes_a_build(tmp_path, models):
    r = cli(tmp_path / "site", "--model", models[0])
    assert r.returncode == 0, r.stderr
    assert "chat.html" in r.stdout and (tmp_path / "site" / "models" / "a.gguf").is_file()


def test_the_jupyterlite_site_and_its_lock_file(built):
    """The notebook site setup built (jupyterlite.SITE) is in the build as serve layers it: the files
    static/ lacks, and the kernel's lock file over the build's own wheels (sha256 of those bytes)."""
    from webllm_py import jupyterlite

    assert (jupyterlite.SITE / "jupyter-lite.json").is_file(), "setup builds the JupyterLite site"
    for rel in ("lab/index.html", "jupyter-lite.json", "files/webllm_py.ipynb"):
        assert (built / rel).read_bytes() == (jupyterlite.SITE / rel).read_bytes(), rel
    lock = json.loads((built / "wheels" / "pyodide-lock.json").read_text())
    for pkg in lock["packages"].values():
        data = (built / "wheels" / pkg["file_name"]).read_bytes()
        assert pkg["sha256"] == hashlib.sha256(data).hexdigest(), pkg["file_name"]
    assert "webllm-py" in lock["packages"] or "webllm_py" in lock["packages"]
