"""Memory of loading a model in headless Chromium (issue 18): the worker's JS heap sampled during the load.

    .venv/bin/python scripts/browser_load_memory.py [--gc] [MODEL.gguf ...]   (default: SmolLM2, Gemma-3-270M)

For each model: a fresh page of the dev server (`serve`, port 0) with the worker ready, then
`webllm.create({model, cache: false})` (a download, no cache) while this script samples every ~100 ms,
through CDP attached to the worker's target, `Runtime.getHeapUsage`: V8's heap (`usedSize`) and the
ArrayBuffer backing stores (`backingStorageSize`: the downloaded file and Pyodide's wasm memory live
there, not in the V8 heap). Also the resident set of Chromium's renderer (page + worker) and GPU
processes (SwiftShader: the GPU buffers are host memory there), and the wasm memory's size before and
after (it never shrinks: its growth is the Python heap's peak growth). Prints one JSON line per model.
`--gc`: the worker's garbage is collected (CDP HeapProfiler.collectGarbage) before each sample.
tests/browser/test_browser_load_memory.py asserts the bounds on SmolLM2.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GEMMA3 = ROOT / "build" / "models" / "gemma-3-270m-q4_k_m.gguf"
MiB = 1 << 20

_START = """(model) => {
  window.__load = null;
  const t0 = performance.now();
  webllm.create({ model, cache: false }).then(
    (e) => { window.__engine = e; window.__load = { seconds: (performance.now() - t0) / 1000 }; },
    (e) => { window.__load = { error: `${e.name}: ${e.message}` }; });
}"""
_WASM = "import pyodide_js\nint(pyodide_js._module.HEAPU8.length)"


class WorkerCDP:
    """Runtime.* on the page's dedicated worker, through a browser-level CDP session (non-flat attach)."""

    def __init__(self, browser, before: set[str]) -> None:
        """Attach to the one worker that is not in `before` (the worker ids when the page was opened:
        other pages of the browser may have workers of their own)."""
        self.cdp = browser.new_browser_cdp_session()
        self.replies: dict[int, dict] = {}
        self.cdp.on("Target.receivedMessageFromTarget", self._on)
        workers = set(worker_targets(self.cdp)) - before
        if len(workers) != 1:
            raise RuntimeError(f"expected one new worker target, found {workers}")
        self.session = self.cdp.send("Target.attachToTarget", {"targetId": workers.pop(), "flatten": False})[
            "sessionId"
        ]
        self._id = 0

    def _on(self, ev) -> None:
        msg = json.loads(ev["message"])
        if "id" in msg:
            self.replies[msg["id"]] = msg

    def call(self, method: str, page, timeout: float = 30.0) -> dict:
        self._id += 1
        i = self._id
        self.cdp.send(
            "Target.sendMessageToTarget",
            {"sessionId": self.session, "message": json.dumps({"id": i, "method": method, "params": {}})},
        )
        t0 = time.monotonic()
        while i not in self.replies:  # events are delivered while Playwright's sync API runs
            page.wait_for_timeout(10)
            if time.monotonic() - t0 > timeout:
                raise TimeoutError(method)
        r = self.replies.pop(i)
        if "error" in r:
            raise RuntimeError(f"{method}: {r['error']}")
        return r["result"]

    def close(self) -> None:
        self.cdp.detach()


def worker_targets(cdp) -> list[str]:
    return [t["targetId"] for t in cdp.send("Target.getTargets")["targetInfos"] if t["type"] == "worker"]


def _chromium_rss() -> dict:
    """Resident set of this process's Chromium renderer and GPU processes (psutil, /proc)."""
    import psutil

    out = {"renderer": 0, "gpu": 0}
    for p in psutil.Process().children(recursive=True):
        try:
            cmd = " ".join(p.cmdline())
            kind = "renderer" if "--type=renderer" in cmd else "gpu" if "--type=gpu-process" in cmd else None
            if kind:
                out[kind] += p.memory_info().rss
        except psutil.Error:
            pass
    return out


def measure(
    chromium, url: str, model_name: str, size: int, run_python, interval: float = 0.1, gc: bool = False
) -> dict:
    """Load `model_name` (served at url + models/) in a fresh page; the peaks during the load, in bytes,
    and their growth over the ready worker's values. `gc`: collect the worker's garbage before each
    sample (then ArrayBuffers count what is live, not the download's chunks awaiting collection)."""
    probe = chromium.new_browser_cdp_session()
    before = set(worker_targets(probe))
    probe.detach()
    page = chromium.new_page()
    page.set_default_timeout(600_000)
    try:
        page.goto(url + "script-tag.html")
        page.evaluate("() => webllm.ready()")
        wasm_before = run_python(page, _WASM)
        cdp = WorkerCDP(chromium, before)
        try:
            base = cdp.call("Runtime.getHeapUsage", page)
            rss0 = _chromium_rss()
            peak = dict(base)
            rss_peak = dict(rss0)
            samples = 0
            page.evaluate(_START, model_name)
            while True:
                if gc:
                    cdp.call("HeapProfiler.collectGarbage", page)
                h = cdp.call("Runtime.getHeapUsage", page)
                samples += 1
                for k, v in h.items():
                    peak[k] = max(peak.get(k, 0), v)
                for k, v in _chromium_rss().items():
                    rss_peak[k] = max(rss_peak[k], v)
                done = page.evaluate("() => window.__load")
                if done:
                    break
                page.wait_for_timeout(int(interval * 1000))
        finally:
            cdp.close()
        if "error" in done:
            raise RuntimeError(done["error"])
        wasm_after = run_python(page, _WASM)
    finally:
        page.close()
    return {
        "model": model_name,
        "file_bytes": size,
        "gc": gc,
        "load_s": round(done["seconds"], 1),
        "samples": samples,
        "js_heap_used_before": base["usedSize"],
        "js_heap_used_peak": peak["usedSize"],
        "js_heap_used_growth": peak["usedSize"] - base["usedSize"],
        "backing_store_before": base.get("backingStorageSize"),
        "backing_store_peak": peak.get("backingStorageSize"),
        "backing_store_growth": (
            peak["backingStorageSize"] - base["backingStorageSize"] if "backingStorageSize" in base else None
        ),
        "wasm_before": wasm_before,
        "wasm_growth": wasm_after - wasm_before,
        "renderer_rss_before": rss0["renderer"],
        "renderer_rss_growth": rss_peak["renderer"] - rss0["renderer"],
        "gpu_rss_before": rss0["gpu"],
        "gpu_rss_growth": rss_peak["gpu"] - rss0["gpu"],
    }


def summary(r: dict) -> str:
    f = r["file_bytes"]
    return (
        f"{r['model']}: file {f / MiB:.0f} MiB; during the load ({r['load_s']} s, {r['samples']} samples): "
        f"V8 heap +{r['js_heap_used_growth'] / MiB:.0f} MiB (peak {r['js_heap_used_peak'] / MiB:.0f}), "
        f"ArrayBuffers +{r['backing_store_growth'] / MiB:.0f} MiB, wasm memory +{r['wasm_growth'] / MiB:.0f} MiB, "
        f"renderer RSS +{r['renderer_rss_growth'] / MiB:.0f} MiB, GPU process RSS +{r['gpu_rss_growth'] / MiB:.0f} MiB"
    )


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def main(argv: list[str]) -> int:
    sys.path.insert(0, str(ROOT))
    from playwright.sync_api import sync_playwright

    from webllm_py import serve
    from webllm_py.default_model import default_model_path

    config = _load("webllm_playwright_config", ROOT / "playwright.config.py")
    conftest = _load("webllm_browser_conftest", ROOT / "tests" / "browser" / "conftest.py")
    gc = "--gc" in argv
    models = [Path(a) for a in argv if a != "--gc"] or [Path(default_model_path()), GEMMA3]
    srv = serve.start_in_thread(port=0, site=serve.build_site(models))
    pw = sync_playwright().start()
    try:
        browser = pw.chromium.launch(executable_path=config.CHROMIUM, args=config.LAUNCH_ARGS, headless=True)
        for m in models:
            r = measure(browser, serve.server_url(srv), m.name, m.stat().st_size, conftest.run_python, gc=gc)
            print(summary(r), file=sys.stderr)
            print(json.dumps(r), flush=True)
        browser.close()
    finally:
        pw.stop()
        srv.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
