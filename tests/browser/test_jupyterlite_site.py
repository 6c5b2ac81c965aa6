"""The JupyterLite site as the server hands it out (CPython, no browser): the apps under /lab/ and
/notebooks/ beside the chat pages, and the lock file its Pyodide kernel loads packages through, checked
against the wheels' own bytes and against npm Pyodide's lock file."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
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


def test_the_served_kernel_has_coincident_mended(url):
    """Both copies of coincident (main thread's chunk, coincident.worker) as served carry every mend of
    jupyterlite.COINCIDENT_MENDS and none of the originals: the reply's index 0 is stored last, atomically,
    never by the plain loop; a waitAsync that finds the answer already there resolves."""
    static = jupyterlite.SITE / jupyterlite.KERNEL_EXTENSION
    chunks = {js.name: get(url + str(jupyterlite.KERNEL_EXTENSION / js.name))[1].decode() for js in static.glob("*.js")}
    for what, pattern, _, marker in jupyterlite.COINCIDENT_MENDS:
        assert not [n for n, t in chunks.items() if pattern.search(t)], what
        mended = sorted(n for n, t in chunks.items() if t.count(marker) == 1)
        assert len(mended) == 2 and any(n.startswith("coincident.worker.") for n in mended), (what, mended)


ORIGINAL = "x;{let e=r.get(s);for(let t=new Pe(o.buffer),i=0;i<e.length;i++)t[i]=e.charCodeAt(i)}pe(o,0)"


def test_mended_reply_write_fills_the_buffer_and_stores_index_0_last(tmp_path, node):
    """The mended loop run by node: the buffer holds the reply's UTF-16 code units, and index 0 is 0 until
    the last statement (a waiter that sees it non-zero sees the whole reply)."""
    fixed, n = jupyterlite.mend(jupyterlite.COINCIDENT_REPLY_WRITE, jupyterlite.COINCIDENT_REPLY_WRITE_FIXED, ORIGINAL)
    assert n == 1
    body = fixed[fixed.index("{let t=") : fixed.rindex("}pe(")]
    script = f"""
const Pe = Uint16Array, seen = [];
const Real = Atomics.store;
for (const e of ["1", "{{}}", '{{"mtime":"2026-01-01T00:00:00.000Z","size":4096}}', "\\"é\\u{{1F600}}\\""]) {{
  const o = new Int32Array(new SharedArrayBuffer(2 * e.length + (2 * e.length) % 4));
  Atomics.store = (a, i, v) => {{ seen.push(a[0]); return Real(a, i, v); }};
  {body}
  Atomics.store = Real;
  const got = new TextDecoder("utf-16").decode(new Uint16Array(o.buffer).slice(0, e.length));
  if (got !== e) throw new Error(`wrote ${{JSON.stringify(got)}} for ${{JSON.stringify(e)}}`);
}}
console.log(JSON.stringify(seen));
"""
    (tmp_path / "t.js").write_text(script)
    r = subprocess.run([node, str(tmp_path / "t.js")], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == [0, 0, 0, 0]  # index 0 still 0 when the store comes


# coincident 1.2.3's main thread waiting for the worker, as the worker's copy has it (the main thread's
# chunk: `A=(e,t)=>e?c(t,0):(S?...:u(t,0),w)`).
ORIGINAL_WAIT = "u=(e,t)=>e?re(t,0):(o?at(t,l,o):ge(t,0),ut),d=!1"
# The answering side's first step, after the action: sb[1] was set, index 0 says so.
ORIGINAL_FLAG = "else h=Error(`Unsupported action: ${e}`);o[0]=1}else{let e=n.get(s)"


def test_mended_wait_async_resolves_when_the_answer_is_already_there(tmp_path, node):
    """The waiting function run by node, index 0 already non-zero (the worker answered before the main
    thread's wait): the original throws "value.then is not a function" (the page error of kernel 0.8.6's
    runs), the mended one resolves; with index 0 still 0 the mended one resolves only on the notify."""
    fixed, n = jupyterlite.mend(
        jupyterlite.COINCIDENT_WAIT_ASYNC, jupyterlite.COINCIDENT_WAIT_ASYNC_FIXED, ORIGINAL_WAIT
    )
    assert n == 1
    script = f"""
const re = Atomics.waitAsync, ge = Atomics.wait, at = null, o = null, l = 42, ut = {{value: {{then: f => f()}}}};
const steps = [];
{{ let {ORIGINAL_WAIT};
  const sb = new Int32Array(new SharedArrayBuffer(8)); sb[0] = 1;
  try {{ u(true, sb).value.then(() => steps.push("original resolved")); }} catch (e) {{ steps.push(String(e)); }}
}}
let {fixed};
const done = new Int32Array(new SharedArrayBuffer(8)); done[0] = 1;
const pending = new Int32Array(new SharedArrayBuffer(8));
u(true, done).value.then(() => steps.push("already there: resolved"));
u(true, pending).value.then(() => steps.push("pending: resolved"));
setTimeout(() => {{
  steps.push("notify");
  Atomics.store(pending, 0, 1); Atomics.notify(pending, 0);
  setTimeout(() => console.log(JSON.stringify(steps)), 50);
}}, 50);
"""
    (tmp_path / "t.js").write_text(script)
    r = subprocess.run([node, str(tmp_path / "t.js")], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == [
        "TypeError: u(...).value.then is not a function",
        "already there: resolved",
        "notify",
        "pending: resolved",
    ]


def test_fix_coincident_refuses_a_bundle_it_does_not_know(tmp_path):
    static = tmp_path / jupyterlite.KERNEL_EXTENSION
    static.mkdir(parents=True)
    bundle = ORIGINAL + ORIGINAL_WAIT + ORIGINAL_FLAG
    (static / "88.js").write_text(bundle)  # the main thread's copy only: no coincident.worker
    with pytest.raises(jupyterlite.JupyterLiteError, match="reply write found 1 times"):
        jupyterlite.fix_coincident(tmp_path)
    (static / "coincident.worker.x.js").write_text(ORIGINAL.replace("Pe", "d"))  # the wait is missing
    (static / "88.js").write_text(bundle)
    with pytest.raises(jupyterlite.JupyterLiteError, match="waitAsync result found 1 times"):
        jupyterlite.fix_coincident(tmp_path)
    assert (static / "88.js").read_text() == bundle  # nothing written when a mend is missing
    (static / "coincident.worker.x.js").write_text(bundle.replace("Pe", "d"))
    assert [p.name for p in jupyterlite.fix_coincident(tmp_path)] == ["88.js", "coincident.worker.x.js"]
    for js in ("88.js", "coincident.worker.x.js"):
        text = (static / js).read_text()
        assert all(p.search(text) is None and text.count(m) == 1 for _, p, _, m in jupyterlite.COINCIDENT_MENDS)
