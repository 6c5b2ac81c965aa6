"""The JupyterLite site as the server hands it out (CPython, no browser): the apps under /lab/ and
/notebooks/ beside the chat pages, and the lock file its Pyodide kernel loads packages through, checked
against the wheels' own bytes and against npm Pyodide's lock file."""

from __future__ import annotations

import hashlib
import io
import json
import urllib.request
import zipfile

import pytest

from webllm_py import jupyterlite, serve


@pytest.fixture(scope="module")
def url():
    if not (jupyterlite.SITE / "jupyter-lite.json").is_file():
        pytest.fail(f"no JupyterLite site at {jupyterlite.SITE}: run ./scripts/setup.sh")
    srv = serve.start_in_thread(port=0, site=serve.build_site([]))
    yield serve.server_url(srv)
    srv.shutdown()
    srv.server_close()


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def test_site_is_served_beside_the_static_pages(url):
    for path in ("lab/", "lab/index.html", "notebooks/index.html", "tree/", "files/webllm_py.ipynb", "config-utils.js"):
        assert get(url + path)[0] == 200, path
    with urllib.request.urlopen(url + "lab", timeout=30) as r:  # redirected to the folder
        assert r.url == url + "lab/" and r.status == 200
    status, body = get(url)  # the root stays the kernel demo, and declares itself JupyterLite's root
    assert b"kernel demo" in body and b'id="jupyter-config-data"' in body
    config = json.loads(get(url + "jupyter-lite.json")[1])["jupyter-config-data"]
    kernel = config["litePluginSettings"]["@jupyterlite/pyodide-kernel-extension:kernel"]
    assert kernel["pyodideUrl"] == "../pyodide/pyodide.mjs" and kernel["disablePyPIFallback"] is True
    nb = json.loads(get(url + "files/webllm_py.ipynb")[1])
    assert any("webllm_py.create(" in "".join(c["source"]) for c in nb["cells"])


def test_kernel_lock_file_lists_the_served_wheels_with_their_hashes(url):
    lock = json.loads(get(url + "wheels/pyodide-lock.json")[1])
    npm = json.loads(jupyterlite.NPM_LOCK.read_text())
    assert lock["info"] == npm["info"]
    pkgs = lock["packages"]
    # What the kernel loads at start (micropip, ipython, jedi, comm) and what it preloads (webllm_py).
    for name in ("micropip", "ipython", "jedi", "comm", "webllm-py", "jinja2", "markupsafe"):
        assert name in pkgs, name
    for name, p in pkgs.items():
        status, whl = get(url + "wheels/" + p["file_name"])
        assert status == 200 and hashlib.sha256(whl).hexdigest() == p["sha256"], name
        assert set(p["depends"]) <= set(pkgs), name
        with zipfile.ZipFile(io.BytesIO(whl)) as z:  # what Pyodide will import exists
            assert p["imports"] and all(
                any(n.startswith((i + "/", i + ".py")) for n in z.namelist()) for i in p["imports"]
            ), name
    assert pkgs["webllm-py"]["imports"] == ["webllm_py"] and pkgs["ipython"]["imports"] == ["IPython"]
    assert pkgs["matplotlib-inline"]["imports"] == ["matplotlib_inline"]


def test_lock_file_refuses_a_missing_dependency(tmp_path):
    ipython = next(p for p in serve.VENDOR_WHEELS.glob("ipython-*.whl"))
    with pytest.raises(jupyterlite.JupyterLiteError, match="asttokens"):
        jupyterlite.lock_file({ipython.name: ipython})
