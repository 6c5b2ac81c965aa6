"""The page never waits forever on a worker that is gone, and raises no unhandled rejection of its own.

A worker can stop without `onerror` (the page or the browser terminates it, out of memory): webllm.js
learns it through the Web Lock the worker holds while it lives. Every pending request then fails with a
typed WorkerError, so does every later request of that client (an Engine made on it), and the next
webllm call starts a fresh worker. Each test opens a page of its own (the shared one keeps its worker)."""

from __future__ import annotations

import pytest

from .conftest import open_page

pytestmark = pytest.mark.browser


def _page(chromium, url, route=None):
    ctx = chromium.new_context()
    if route:
        ctx.route(*route)  # a context route: it sees the worker's fetches too
    return open_page(ctx, url, console=False)


def test_a_terminated_worker_fails_its_requests_and_the_next_call_starts_a_new_one(chromium, server_url):
    page = _page(chromium, server_url + "script-tag.html")
    try:
        r = page.evaluate("""async () => {
            await webllm.ready();
            const old = webllm.client();
            const settle = (p) => Promise.race([p.then(() => "resolved", (e) => e.name),
                                                new Promise((r) => setTimeout(() => r("still waiting"), 5000))]);
            const pending = webllm.runPython("import asyncio\\nawait asyncio.sleep(60)");
            // A request whose signal fires just before the worker goes: its abort request fails too.
            const ctl = new AbortController();
            const aborted = webllm.runPython("import asyncio\\nawait asyncio.sleep(60)", { signal: ctl.signal });
            await new Promise((r) => setTimeout(r, 300));  // both sent and queued in the worker
            ctl.abort();
            old.worker.terminate();  // no onerror: only the lock tells the page
            const outcome = await settle(pending);
            const abortedOutcome = await settle(aborted);
            const later = await settle(old.request("exec", { code: "1" }));  // an Engine on the old client
            const hint = webllm.errorHint({ name: outcome });
            const fresh = await Promise.race([webllm.runPython("6 * 7"), settle(new Promise(() => {}))]);
            return { outcome, abortedOutcome, later, hint, fresh, newClient: webllm.client() !== old };
        }""")
        page.wait_for_timeout(200)  # an unhandled rejection is reported after the microtasks
        assert r["outcome"] == "WorkerError" and r["abortedOutcome"] in ("WorkerError", "AbortedError"), r
        assert r["later"] == "WorkerError", r
        assert "new worker" in r["hint"]
        assert r["fresh"] == 42 and r["newClient"] is True
        assert page.errors == []
    finally:
        page.context.close()


def test_a_failed_start_is_no_unhandled_rejection(chromium, server_url):
    """A page that never awaits ready(): the failed init is reported where it is awaited, not as an
    uncaught error. The worker's wheel index answers 404, so init fails at once."""
    page = _page(
        chromium,
        server_url + "script-tag.html",
        ("**/wheels/index.json", lambda route: route.fulfill(status=404, body="not here")),
    )
    try:
        page.wait_for_function("() => webllm.client().answered && webllm.client().pending.size === 0")
        page.wait_for_timeout(300)  # an unhandled rejection is reported after the microtasks
        assert page.errors == []
        assert page.evaluate("() => webllm.ready().then(() => 'ok', (e) => e.name)") != "ok"
    finally:
        page.context.close()


def test_aborted_loads_stop_downloading_and_only_one_is_fetched_ahead(chromium, server_url):
    """Two loads sent while Pyodide starts: only the first reads its model ahead (two models' bytes and two
    start-up devices are not held at once). Aborting a load stops its download: the model's response is held
    (never answered), so the download ends only through the abort; nothing is cached."""
    held, failed = [], []
    page = _page(chromium, server_url + "script-tag.html", ("**/models/*.gguf", lambda route: held.append(route)))
    page.context.on("requestfailed", lambda req: failed.append(req.url))
    try:
        page.evaluate("""() => {
            const model = new URL("models/SmolLM2-135M-Instruct.Q4_1.gguf", location.href).href;
            window.ctls = [new AbortController(), new AbortController()];
            window.loads = window.ctls.map((ctl) => webllm.client().request("load", { model }, { signal: ctl.signal })
                .then(() => "loaded", (e) => e.name));
        }""")
        # The first load's model request is held from its start; the second would show within the wait after it.
        page.wait_for_timeout(500)
        for _ in range(60):
            if held:
                break
            page.wait_for_timeout(500)
        page.wait_for_timeout(1000)
        ahead = len(held)
        r = page.evaluate("""async () => {
            const { download } = await import("/download.js");
            const ctl = new AbortController();
            const direct = download(new URL("models/SmolLM2-135M-Instruct.Q4_1.gguf", location.href).href, () => {}, 4,
                                    { signal: ctl.signal }).then(() => "downloaded", (e) => e.name);
            await new Promise((r) => setTimeout(r, 300));
            ctl.abort();
            for (const c of window.ctls) c.abort();
            // The held response never ends, so any settling is the abort's; the window is wide because the worker
            // reads the abort only between its start-up's synchronous steps (seconds on a loaded 2-core CI machine).
            const within = (p) => Promise.race([p, new Promise((r) => setTimeout(() => r("still waiting"), 30000))]);
            return { direct: await within(direct), loads: await within(Promise.all(window.loads)),
                     cached: await webllm.hasModelInCache("SmolLM2-135M-Instruct.Q4_1.gguf") };
        }""")
        page.wait_for_timeout(300)
        assert r == {"direct": "AbortedError", "loads": ["AbortedError", "AbortedError"], "cached": False}
        assert ahead == 1
        assert len([u for u in failed if u.endswith(".gguf")]) == 2, failed  # the load's and download()'s fetch
    finally:
        for route in held:
            try:
                route.abort()
            except Exception:  # noqa: BLE001 - the page already dropped it
                pass
        page.context.close()
