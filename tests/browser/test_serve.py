"""The dev server and the wheel it builds, checked over real HTTP on CPython (no browser needed)."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import urllib.request
import zipfile
from pathlib import Path

import pytest

from webllm_py import serve, wheel

from ..gguf_models import minimal_gguf


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("models") / "tiny.gguf"
    return minimal_gguf(p)  # ~10 kB; serve parses a .gguf's header


@pytest.fixture(scope="module")
def url(model_file, tmp_path_factory):
    site = serve.build_site([model_file])
    srv = serve.start_in_thread(port=0, site=site)
    yield serve.server_url(srv)
    srv.shutdown()
    srv.server_close()


def get(url: str, headers: dict | None = None):
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def test_every_response_is_cross_origin_isolated(url):
    for path in ("", "webllm.js", "pyodide/pyodide.mjs", "wheels/index.json", "models/index.json", "nope"):
        status, h, _ = get(url + path)
        assert h["Cross-Origin-Opener-Policy"] == "same-origin", path
        assert h["Cross-Origin-Embedder-Policy"] == "require-corp", path


def test_any_origin_may_embed_the_runtime(url):
    """CORP cross-origin + CORS *: a page elsewhere loads webllm.js and fetches the rest over CORS."""
    for path in ("webllm.js", "worker.js", "pyodide/pyodide.asm.wasm", "wheels/index.json", "models/tiny.gguf", "nope"):
        status, h, _ = get(url + path, {"Origin": "http://example.test:8080"})
        assert h["Cross-Origin-Resource-Policy"] == "cross-origin", path
        assert h["Access-Control-Allow-Origin"] == "*", path
    status, h, _ = get(url + "models/tiny.gguf", {"Origin": "http://example.test:8080", "Range": "bytes=0-9"})
    assert status == 206 and "Content-Range" in h["Access-Control-Expose-Headers"]


def test_preflight_allows_range(url):
    import http.client
    from urllib.parse import urlsplit

    u = urlsplit(url)
    c = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
    c.request(
        "OPTIONS",
        "/models/tiny.gguf",
        headers={
            "Origin": "http://example.test",
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "range",
        },
    )
    r = c.getresponse()
    r.read()
    assert r.status == 204 and r.getheader("Access-Control-Allow-Origin") == "*"
    assert "Range" in r.getheader("Access-Control-Allow-Headers") and "GET" in r.getheader(
        "Access-Control-Allow-Methods"
    )
    c.close()


def test_allow_origin_limits_cors_to_the_origins_named(model_file):
    site = serve.build_site([model_file])
    site.allow_origins = (serve.check_origin("http://Good.test:8080/"), serve.check_origin("https://other.test"))
    srv = serve.start_in_thread(port=0, site=site)
    try:
        base = serve.server_url(srv)
        _, h, _ = get(base + "worker.js", {"Origin": "http://good.test:8080"})
        assert h["Access-Control-Allow-Origin"] == "http://good.test:8080" and h["Vary"] == "Origin"
        _, h, _ = get(base + "worker.js", {"Origin": "http://evil.test"})
        assert "Access-Control-Allow-Origin" not in h and h["Vary"] == "Origin"
        _, h, _ = get(base + "chat.html")  # the server's own pages stay isolated
        assert h["Cross-Origin-Embedder-Policy"] == "require-corp" and h["Cross-Origin-Opener-Policy"] == "same-origin"
    finally:
        srv.shutdown()
        srv.server_close()


@pytest.mark.parametrize("bad", ["example.com", "ftp://example.com", "https://example.com/path", "https://"])
def test_allow_origin_refuses_what_is_not_an_origin_in_one_line(bad):
    import subprocess
    import sys

    r = subprocess.run(
        [sys.executable, "-m", "webllm_py", "serve", "--port", "0", "--allow-origin", bad],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode != 0 and r.stdout == ""
    assert r.stderr.count("\n") == 1 and "--allow-origin" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize(
    "path,mime",
    [
        ("webllm.js", "text/javascript"),
        ("webllm.mjs", "text/javascript"),
        ("worker.js", "text/javascript"),
        ("pyodide/pyodide.mjs", "text/javascript"),
        ("pyodide/pyodide.asm.wasm", "application/wasm"),
        ("models/tiny.gguf", "application/octet-stream"),
        ("index.html", "text/html"),
    ],
)
def test_mime_types(url, path, mime):
    status, h, _ = get(url + path)
    assert status == 200 and h["Content-Type"].split(";")[0] == mime


def test_model_index_lists_size_and_sha256(url, model_file):
    status, _, body = get(url + "models/index.json")
    data = model_file.read_bytes()
    assert json.loads(body) == [
        {"name": "tiny.gguf", "url": "/models/tiny.gguf", "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    ]


def test_range_requests_resume_downloads(url, model_file):
    data = model_file.read_bytes()
    status, h, body = get(url + "models/tiny.gguf", {"Range": "bytes=100-199"})
    assert status == 206 and body == data[100:200] and h["Content-Range"] == f"bytes 100-199/{len(data)}"
    status, h, body = get(url + "models/tiny.gguf", {"Range": "bytes=10000-"})
    assert status == 206 and body == data[10000:]
    status, h, body = get(url + "models/tiny.gguf", {"Range": "bytes=-4"})
    assert status == 206 and body == data[-4:]
    status, h, _ = get(url + "models/tiny.gguf", {"Range": f"bytes={len(data)}-"})
    assert status == 416 and h["Content-Range"] == f"bytes */{len(data)}"
    status, h, body = get(url + "models/tiny.gguf")
    assert status == 200 and body == data and h["Accept-Ranges"] == "bytes"


def test_paths_cannot_escape_their_folders(url):
    import http.client
    from urllib.parse import urlsplit

    u = urlsplit(url)
    for path in ("/../pyproject.toml", "/pyodide/../../../../pyproject.toml", "/%2e%2e/pyproject.toml"):
        c = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
        c.request("GET", path)
        assert c.getresponse().status == 404, path
        c.close()


def test_wheel_index_and_wheel_is_not_cached(url):
    status, _, body = get(url + "wheels/index.json")
    names = {e["package"]: e for e in json.loads(body)}
    assert {"jinja2", "markupsafe", "webllm_py"} <= set(names)
    status, h, _ = get(url + names["webllm_py"]["url"].lstrip("/"))
    assert status == 200 and h["Cache-Control"] == "no-cache"


def test_a_server_keeps_serving_the_wheel_it_built(url, model_file, tmp_path):
    """Another server's start (e.g. from a checkout sharing build/, of other sources) does not change the
    wheel this one serves: a page's returning visit would miss its start-up snapshot (keyed by the wheels'
    bytes) and run the other sources. Each server's wheel is in a folder of its own, gone with its Site."""
    import gc

    name = next(e["url"] for e in json.loads(get(url + "wheels/index.json")[2]) if e["package"] == "webllm_py")
    before = get(url + name.lstrip("/"))[2]
    other = serve.build_site([model_file])
    theirs = other.wheels[Path(name).name]
    theirs.write_bytes(b"another checkout's wheel")  # what that server serves is its own business
    assert get(url + name.lstrip("/"))[2] == before == wheel.build_wheel(tmp_path).read_bytes()
    folder = theirs.parent
    del other
    gc.collect()
    assert not folder.exists()


def test_wheel_is_pure_holds_shaders_and_its_record_is_right(tmp_path):
    path = wheel.build_wheel(tmp_path)
    assert path.name == f"webllm_py-{wheel.project_version()}-py3-none-any.whl"
    z = zipfile.ZipFile(io.BytesIO(path.read_bytes()))
    names = set(z.namelist())
    shaders = sorted(p.name for p in (wheel.ROOT / "shaders").glob("*.wgsl.j2"))
    assert shaders and all(f"webllm_py/shaders/{s}" in names for s in shaders)
    assert "webllm_py/__init__.py" in names and "webllm_py/gpu/browser.py" in names
    assert not any("__pycache__" in n for n in names)
    info = f"webllm_py-{wheel.project_version()}.dist-info"
    assert "Tag: py3-none-any" in z.read(f"{info}/WHEEL").decode()
    assert "Name: webllm_py" in z.read(f"{info}/METADATA").decode()
    # RECORD: every other file with its urlsafe-base64 sha256 (no padding) and size (PEP 376/427).
    rows = [line.split(",") for line in z.read(f"{info}/RECORD").decode().splitlines()]
    recorded = {r[0]: r for r in rows}
    assert set(recorded) == names
    for name in names - {f"{info}/RECORD"}:
        data = z.read(name)
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        assert recorded[name][1:] == [f"sha256={digest}", str(len(data))], name
    # Same sources, same bytes.
    assert wheel.build_wheel(tmp_path / "again").read_bytes() == path.read_bytes()


def test_cli_help_lists_serve():
    from webllm_py.__main__ import main

    with pytest.raises(SystemExit) as e:
        main(["serve", "--help"])
    assert e.value.code == 0
