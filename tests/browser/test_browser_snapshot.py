"""The Pyodide start-up snapshot (static/worker.js): init says "stored" only once Cache Storage holds it,
so a page closed right after its first start leaves a snapshot that the next page restores ("hit"), and
a write that fails is reported as "failed" with its reason.

The timing is made deterministic by a hook only this test injects: worker.js is served with a prefix
that wraps Cache.prototype.put for the snapshot's entry, making the write slow (longer than restoring
Pyodide, unpacking the wheels and importing takes here) or making it fail with a quota error.

A snapshot whose heap grew past Pyodide's initial 30 MiB (a larger template or module can do that) must
restore too: the second test makes one from a heap grown by 20 MB (init's test-only _testSnapshotGrowMB).
A snapshot that does not restore is refused once, with why, and later starts of that runtime are full
ones that do not make another (the third test; its hook stores a damaged snapshot).
"""

from __future__ import annotations

import time

import pytest

from .conftest import CONFIG

pytestmark = [pytest.mark.browser, pytest.mark.slow]

# Longer than the rest of a first start after the snapshot is made (restore + wheels + imports: ~0.5 s
# here), so that a worker that does not wait for the write answers init before the write happened.
SLOW_PUT_MS = 2000

_HOOK = """// test hook (tests/browser/test_browser_snapshot.py)
{
  const put = Cache.prototype.put;
  Cache.prototype.put = async function (request, response) {
    if (String(request.url || request).includes("/pyodide-snapshot/")) {
      %s
    }
    return put.call(this, request, response);
  };
}
"""
_PUTS = {
    "slow": f"await new Promise((r) => setTimeout(r, {SLOW_PUT_MS}));",
    "fail": 'throw new DOMException("injected by the test", "QuotaExceededError");',
    # A snapshot (not the refusal record) is stored as 64 zero bytes: no snapshot's magic number.
    "damage": 'if (response.headers.get("content-type") === "application/octet-stream") response = new Response(new Uint8Array(64), { headers: response.headers });',
}


def test_snapshot_is_stored_before_init_answers_and_a_failed_write_is_reported(chromium, server_url):
    ctx = chromium.new_context()  # a fresh profile: no snapshot yet, nothing from other tests
    mode = {"put": "slow"}

    def serve_worker(route):
        r = route.fetch()
        route.fulfill(response=r, body=(_HOOK % _PUTS[mode["put"]]) + r.text())

    ctx.route("**/worker.js", serve_worker)  # routing also keeps the HTTP cache out of the way

    def start():
        page = ctx.new_page()
        page.set_default_timeout(CONFIG.TIMEOUT_MS)
        page.goto(server_url + "script-tag.html")
        t = time.perf_counter()
        return page, page.evaluate("() => webllm.ready()"), time.perf_counter() - t

    try:
        page, first, first_s = start()
        page.close()  # at once: the snapshot must already be in Cache Storage
        page, again, _ = start()
        # The next start again has to make one, and its write fails.
        page.evaluate('() => caches.delete("webllm-pyodide-snapshot")')
        page.close()
        mode["put"] = "fail"
        page, failed, _ = start()
        stored = page.evaluate('async () => (await (await caches.open("webllm-pyodide-snapshot")).keys()).length')
        page.close()
    finally:
        ctx.close()
    assert first["snapshot"] == "stored", first.get("snapshot_error")
    assert again["snapshot"] == "hit", again.get("snapshot_error")
    assert first_s * 1000 > SLOW_PUT_MS  # the hook was in place and init waited for the write
    assert failed["snapshot"] == "failed", failed
    assert "QuotaExceededError" in failed["snapshot_error"] or "injected by the test" in failed["snapshot_error"]
    assert stored == 0
    assert failed["webllm_py"] == first["webllm_py"]  # the worker runs without a snapshot all the same


# Requests straight to a module worker of worker.js (no webllm.js: the payload is the test's), answered
# with each request's final message; the worker is terminated after the last.
_WORKER = """async (requests) => {
  const worker = new Worker("/worker.js", { type: "module" });
  const answers = [];
  try {
    for (const [i, [kind, payload]] of requests.entries()) {
      answers.push(await new Promise((resolve) => {
        worker.onmessage = (ev) => {
          if (ev.data.id === i + 1 && ["result", "error"].includes(ev.data.kind)) resolve(ev.data);
        };
        worker.onerror = (ev) => resolve({ kind: "error", payload: { message: ev.message } });
        worker.postMessage({ kind, id: i + 1, payload });
      }));
    }
  } finally {
    worker.terminate();
  }
  return answers;
}"""

_INITIAL_MEMORY = 480 * 65536  # pyodide.asm.wasm's memory section: what a fresh instance starts with


def test_a_snapshot_larger_than_the_initial_memory_restores(chromium, server_url):
    ctx = chromium.new_context()  # a fresh profile: no snapshot yet
    ctx.route("**/blank.html", lambda r: r.fulfill(body="<!doctype html>", content_type="text/html"))
    try:
        page = ctx.new_page()
        page.set_default_timeout(CONFIG.TIMEOUT_MS)
        page.goto(server_url + "blank.html")
        [first] = page.evaluate(_WORKER, [["init", {"_testSnapshotGrowMB": 20}]])
        again, ran = page.evaluate(_WORKER, [["init", {}], ["exec", {"code": "sum(bytearray(40 << 20)) + 45"}]])
    finally:
        ctx.close()
    assert first["kind"] == "result" and again["kind"] == "result", (first, again)
    first, again = first["payload"], again["payload"]
    assert first["snapshot"] == "stored", first.get("snapshot_error")
    # The maker's heap grew well past the initial memory, so the snapshot did too ...
    assert first["snapshot_bytes"] > _INITIAL_MEMORY + (10 << 20), first
    # ... and the next start restores it (before the fix: "failed", "RangeError: offset is out of bounds").
    assert again["snapshot"] == "hit", again.get("snapshot_error")
    assert again["snapshot_bytes"] == first["snapshot_bytes"]
    # Restored, not started in full: the restore takes a fraction of a first start (maker + restore).
    assert again["pyodide_s"] * 2 < first["pyodide_s"], (first, again)
    # The restored interpreter runs and can still grow its heap.
    assert ran == {"kind": "result", "id": 2, "payload": 45}, ran


def test_a_snapshot_that_does_not_restore_is_refused_once_and_not_made_again(chromium, server_url):
    ctx = chromium.new_context()  # a fresh profile: no snapshot yet

    def serve_worker(route):
        r = route.fetch()
        route.fulfill(response=r, body=(_HOOK % _PUTS["damage"]) + r.text())

    ctx.route("**/worker.js", serve_worker)
    ctx.route("**/blank.html", lambda r: r.fulfill(body="<!doctype html>", content_type="text/html"))
    entry = """async () => {
      const c = await caches.open("webllm-pyodide-snapshot");
      return Promise.all((await c.keys()).map(async (k) => (await c.match(k)).headers.get("content-type")));
    }"""
    try:
        page = ctx.new_page()
        page.set_default_timeout(CONFIG.TIMEOUT_MS)
        page.goto(server_url + "blank.html")
        [made] = page.evaluate(_WORKER, [["init", {}]])  # restores from its own bytes; stores damaged ones
        after_made = page.evaluate(entry)
        [damaged] = page.evaluate(_WORKER, [["init", {}]])
        after_damaged = page.evaluate(entry)
        [later] = page.evaluate(_WORKER, [["init", {}]])
        after_later = page.evaluate(entry)
    finally:
        ctx.close()
    assert [a["kind"] for a in (made, damaged, later)] == ["result"] * 3, (made, damaged, later)
    made, damaged, later = made["payload"], damaged["payload"], later["payload"]
    assert made["snapshot"] == "stored", made.get("snapshot_error")
    assert after_made == ["application/octet-stream"]
    # The damaged snapshot fails its restore: a full start, and the refusal replaces the snapshot ...
    assert damaged["snapshot"] == "failed", damaged
    assert "did not restore" in damaged["snapshot_error"] and "invalid magic number" in damaged["snapshot_error"]
    assert "now starts in full without making another" in damaged["snapshot_error"]  # says what happens and
    assert "clearing this site's data" in damaged["snapshot_error"]  # what to do
    assert after_damaged == ["application/vnd.webllm.snapshot-refused+json"]
    # ... so a later start neither restores nor makes one (it would store a snapshot again).
    assert later["snapshot"] == "failed", later
    assert "an earlier start refused the start-up snapshot" in later["snapshot_error"]
    assert "invalid magic number" in later["snapshot_error"]
    assert after_later == after_damaged
    assert "snapshot_bytes" not in later and later["webllm_py"] == made["webllm_py"]
