"""Lint and type check in CI (issue 16), run by the test suite so that `.ci/run` stays the README's one
test command: ruff's checks and `ruff format --check` over the Python tree, and mypy over the GPU layer,
the kernel planner, linear.py and the model families (pyproject.toml's [tool.ruff] and [tool.mypy] say which rules and files)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_ruff_check_is_clean():
    r = run("ruff", "check", "--no-cache", "webllm_py", "tests", "scripts")
    assert r.returncode == 0, r.stdout + r.stderr


def test_ruff_format_is_clean():
    # docs too: their Python examples are what users copy (ruff formats Markdown code blocks)
    r = run("ruff", "format", "--no-cache", "--check", "webllm_py", "tests", "scripts", "docs", "README.md")
    assert r.returncode == 0, r.stdout + r.stderr


def test_mypy_is_clean(tmp_path):
    r = run("mypy", "--cache-dir", str(tmp_path / "mypy"))
    assert r.returncode == 0 and "Success" in r.stdout, r.stdout + r.stderr
