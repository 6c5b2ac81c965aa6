"""Models by URL: hf: resolution, URL checks and shard names, in Python (webllm_py/model_url.py) and,
through Node, in the browser's copy of the same rules (static/modelurl.js): one table, both must agree.
The expected URLs are written from the Hub's own scheme (`/<owner>/<repo>/resolve/<rev>/<path>`,
revision percent-encoded as huggingface_hub's hf_hub_url does) and llama.cpp's "%s-%05d-of-%05d.gguf"."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from webllm_py.errors import ModelURLError, RequestError
from webllm_py.model_url import resolve_model_url, shard_names

ROOT = Path(__file__).resolve().parents[1]
HUB = "https://huggingface.co"
RESOLVE = [  # (model, hf endpoint, expected URL or None for a ModelURLError)
    ("hf:owner/repo/file.gguf", None, f"{HUB}/owner/repo/resolve/main/file.gguf"),
    (
        "hf:HuggingFaceTB/SmolLM2-135M-Instruct-GGUF/sub dir/x-Q4.gguf",
        None,
        f"{HUB}/HuggingFaceTB/SmolLM2-135M-Instruct-GGUF/resolve/main/sub%20dir/x-Q4.gguf",
    ),
    ("hf:o/r/a/b/file.gguf@v1.0", None, f"{HUB}/o/r/resolve/v1.0/a/b/file.gguf"),
    ("hf:o/r@abc123/file.gguf", None, f"{HUB}/o/r/resolve/abc123/file.gguf"),
    ("hf:o/r/file.gguf@refs/pr/1", None, f"{HUB}/o/r/resolve/refs%2Fpr%2F1/file.gguf"),
    ("  hf:o/r/file.GGUF ", "http://127.0.0.1:9/", "http://127.0.0.1:9/o/r/resolve/main/file.GGUF"),
    ("hf:o/r/x.gguf", "https://mirror.example/hub/", "https://mirror.example/hub/o/r/resolve/main/x.gguf"),
    ("hf:o/r/x.gguf", "", f"{HUB}/o/r/resolve/main/x.gguf"),  # empty: the default Hub
    ("hf:o/r/x.gguf", 42, None),  # the endpoint must be an http(s) URL (a number threw a TypeError in JS)
    ("hf:o/r/x.gguf", {"url": HUB}, None),
    ("hf:o/r/x.gguf", "mirror.example", None),  # no scheme: a relative URL
    ("hf:o/r/x.gguf", "ftp://mirror.example", None),
    ("hf:o/r/x.gguf", "hf:o/r/y.gguf", None),
    ("https://example.com/m/x.gguf", None, "https://example.com/m/x.gguf"),
    ("http://127.0.0.1:8000/x.gguf?download=1", None, "http://127.0.0.1:8000/x.gguf?download=1"),
    ("hf:o/file.gguf", None, None),  # no repository
    ("hf:o/r", None, None),  # no file
    ("hf:o/r/file.bin", None, None),  # not GGUF
    ("hf:o/r/../x.gguf", None, None),  # path escape
    ("hf:o/r//x.gguf", None, None),  # empty segment
    ("hf:o/r@a/x.gguf@b", None, None),  # two revisions
    ("hf:o/r/x.gguf@", None, None),  # empty revision
    ("hf:o/r/x.gguf@a..b", None, None),
    ("hf:-o/r/x.gguf", None, None),  # bad owner
    ("hf:o/r:x/x.gguf", None, None),  # bad repository
    ("ftp://host/x.gguf", None, None),  # unsupported scheme
    ("file:///etc/passwd", None, None),
    ("javascript:alert(1)", None, None),
    ("data:application/octet-stream;base64,R0dVRg==", None, None),
    ("http://[::1/x.gguf", None, None),  # unparseable
    ("http://host:99999/x.gguf", None, None),  # port out of range
    ("https:///x.gguf", None, None),  # no host
    ("models/x.gguf", None, None),  # not a URL (served names are resolved by the client)
    ("", None, None),
]
SHARDS = [
    ("m-00001-of-00003.gguf", ["m-00001-of-00003.gguf", "m-00002-of-00003.gguf", "m-00003-of-00003.gguf"]),
    (
        "https://h/o/r/resolve/main/Q4/m.Q4-00002-of-00002.gguf",
        [
            "https://h/o/r/resolve/main/Q4/m.Q4-00001-of-00002.gguf",
            "https://h/o/r/resolve/main/Q4/m.Q4-00002-of-00002.gguf",
        ],
    ),
    ("m-00001-of-00001.gguf", ["m-00001-of-00001.gguf"]),
    ("m.gguf", None),
    ("m-1-of-3.gguf", None),
    ("m-00001-of-00003.gguf.part", None),
    ("m-00000-of-00003.gguf", "error"),
    ("m-00004-of-00003.gguf", "error"),
]


def py_resolve(model, endpoint):
    try:
        return resolve_model_url(model, endpoint)
    except ModelURLError:
        return None


def py_shards(name):
    try:
        return shard_names(name)
    except ModelURLError:
        return "error"


@pytest.mark.parametrize("model,endpoint,want", RESOLVE)
def test_resolve(model, endpoint, want):
    assert py_resolve(model, endpoint) == want


def test_url_errors_are_request_errors():
    with pytest.raises(RequestError, match="scheme is not supported"):
        resolve_model_url("ftp://h/x.gguf")


@pytest.mark.parametrize("name,want", SHARDS)
def test_shard_names(name, want):
    assert py_shards(name) == want


_NODE = """
import { resolveModelURL, shardNames } from "%s";
const [resolve, shards] = JSON.parse(process.argv[1]);
const tryIt = (f, bad) => { try { return f(); } catch (e) { if (e.name !== "ModelURLError") throw e; return bad; } };
console.log(JSON.stringify({
  resolve: resolve.map(([m, ep]) => tryIt(() => resolveModelURL(m, ep), null)),
  shards: shards.map(([n]) => tryIt(() => shardNames(n), "error")),
}));
"""


def test_browser_copy_agrees(node):
    script = _NODE % (ROOT / "static" / "modelurl.js").as_uri()
    out = subprocess.run(
        [node, "--input-type=module", "-e", script, json.dumps([RESOLVE, SHARDS])],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    got = json.loads(out.stdout)
    assert got["resolve"] == [want for _, _, want in RESOLVE]
    assert got["shards"] == [want for _, want in SHARDS]


def test_js_error_names_exist_in_python(node):
    """Python in Pyodide re-raises download.js's errors by name (browser_models._typed)."""
    from webllm_py import errors

    script = f'import {{ ERRORS }} from "{(ROOT / "static" / "protocol.js").as_uri()}"; console.log(JSON.stringify(Object.keys(ERRORS)))'
    names = json.loads(
        subprocess.run(
            [node, "--input-type=module", "-e", script], capture_output=True, text=True, timeout=60, check=True
        ).stdout
    )
    missing = [n for n in names if n != "QuotaError" and not issubclass(getattr(errors, n, type), errors.WebLLMError)]
    assert names and missing == []


# Error names the JS files may use that are not theirs to define: Pyodide's (an uncaught Python
# exception) and the DOM's (a full storage quota, caught and turned into QuotaError).
PLATFORM_ERRORS = {"PythonError", "QuotaExceededError"}


def test_js_files_name_errors_from_the_table():
    """static/*.js raise only errors of protocol.js's ERRORS table (by E.Name in the modules, as a string
    literal in the classic script webllm.js), or errors.py's base class; every E.Name is in the table."""
    from webllm_py import errors

    text = (ROOT / "static" / "protocol.js").read_text()
    table = set(re.findall(r"^  (\w+Error): ", text[text.index("export const ERRORS") :], re.M))
    assert {"DownloadError", "ProtocolError", "WorkerError"} <= table
    used, constants = set(), set()
    for f in sorted((ROOT / "static").glob("*.js")):
        if f.name == "protocol.js":
            continue
        code = re.sub(r"^\s*//.*$", "", f.read_text(), flags=re.M)  # comments may name anything
        used |= set(re.findall(r"[\"'`](\w+Error)[\"'`]", code))
        constants |= set(re.findall(r"\bE\.(\w+)", code))
    loose = sorted(n for n in used - table - PLATFORM_ERRORS if getattr(errors, n, None) is not errors.WebLLMError)
    assert used and loose == []
    assert constants and sorted(constants - table) == []
