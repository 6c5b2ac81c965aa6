"""Returning visit on SwiftShader: page start to first token, by phase (issue 22's <= 5 s target).

Headless Chromium (the browser tests' settings, playwright.config.py) opens static/bench.html once to
fill the browser's caches (model, Pyodide start-up snapshot, start-up kernels), then RUNS more times
in the same profile; each run is bench.html's runCachedStart (37-token chat prompt, greedy). Prints
each run's phases (ms since the page's navigation started, and their lengths) and the min/median.

    .venv/bin/python scripts/cached_start_bench.py [RUNS] [--json]

It serves the webllm_py that Python imports: `PYTHONPATH=/path/to/other/checkout` measures another
tree (e.g. a `git worktree` of an older commit) with this script. Not a test: it asserts nothing.
"""

from __future__ import annotations

import importlib.util
import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def phases(r: dict) -> dict[str, float]:
    """Lengths (ms) of a runCachedStart result's phases, in the order they happen on the critical path."""
    rt, tl, st = r["runtime"], r["timeline_ms"], r["chat_stats"]
    upload = tl.get("upload", [r["loaded_ms"], r["loaded_ms"]])
    return {
        "worker_start": r["worker_init_start_ms"],  # page navigation -> the worker's init began
        "pyodide_restore": 1e3 * rt["pyodide_s"],  # loadPyodide from the start-up snapshot
        "wheels": 1e3 * rt["wheels_s"],  # unpacking the wheels (a snapshot holds memory, not files)
        "ready": r["ready_ms"],  # page start -> runtime ready (the above + info, messaging)
        # ready -> first weight uploaded: the model bytes read from the cache (during the start), the
        # checkpoint parsed (GGUF header, tokenizer), the device requested
        "model_open": upload[0] - r["ready_ms"],
        "weight_upload": r["loaded_ms"] - upload[0],  # build_model: weights to the GPU, bind groups
        "loaded": r["loaded_ms"],
        # loaded -> first token: the 37-token prefill, waiting for kernels still compiling first
        "first_prefill": r["first_token_ms"] - r["loaded_ms"],
        "kernels_wait": 1e3 * st.get("kernels_ahead_wait_s", 0.0),  # ... of which waiting for them
        "first_token": r["first_token_ms"],
    }


def main(argv: list[str]) -> int:
    runs = int(next((a for a in argv if a.isdigit()), "3"))
    from playwright.sync_api import sync_playwright

    from webllm_py import serve

    spec = importlib.util.spec_from_file_location("webllm_playwright_config", ROOT / "playwright.config.py")
    cfg = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cfg)
    srv = serve.start_in_thread(port=0)
    url = serve.server_url(srv) + "bench.html"
    pw = sync_playwright().start()
    browser = pw.chromium.launch(executable_path=cfg.CHROMIUM, args=cfg.LAUNCH_ARGS, headless=True)
    rows = []
    try:
        page = browser.new_page()
        page.set_default_timeout(cfg.TIMEOUT_MS)
        page.goto(url)
        first = page.evaluate("() => runCachedStart({ chatTokens: 2 })")
        print(f"first visit (download, snapshot, kernels recorded): first token {first['first_token_ms']} ms")
        for i in range(runs):
            page.goto(url)
            r = page.evaluate("() => runCachedStart({ chatTokens: 2 })")
            p = phases(r)
            rows.append(p)
            st = r["chat_stats"]
            print(
                f"run {i + 1}: " + ", ".join(f"{k} {v:.0f}" for k, v in p.items()),
                f"| snapshot {r['runtime']['snapshot']}, kernels_ahead {st.get('kernels_ahead')}, "
                f"prompt {st['prompt_tokens']} tokens, text {r['chat_text']!r}",
                flush=True,
            )
            if "--json" in argv:
                print("CACHED_START_JSON " + json.dumps(r))
    finally:
        browser.close()
        pw.stop()
        srv.shutdown()
    if rows:
        print("min:    " + ", ".join(f"{k} {min(r[k] for r in rows):.0f}" for k in rows[0]))
        print("median: " + ", ".join(f"{k} {statistics.median(r[k] for r in rows):.0f}" for k in rows[0]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
