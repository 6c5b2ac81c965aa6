"""The browser benchmark page (static/bench.html) on SwiftShader: it must run end to end and report
sane numbers. The JSON it produces is printed (pytest -s shows it) and copied into docs/benchmarks.md.
Token counts are tiny: SwiftShader decodes SmolLM2 at ~0.1-1 tok/s on a shared CI core."""

from __future__ import annotations

import json

import pytest

from .conftest import open_page

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def test_bench_page_reports_issue_time_and_cached_first_token(chromium, server_url):
    page = open_page(chromium, server_url + "bench.html")
    try:
        # 6 decode steps: the best of 4 replayed issue times is checked below (one or two steps can
        # be preempted by other processes on a loaded 2-core machine)
        r = page.evaluate("() => runBench({ decode: 6, prompt: 8, chatTokens: 2 })")
        # A returning visit (same profile: model and start-up snapshot cached), page start to first token.
        page.goto(server_url + "bench.html")
        again = page.evaluate("() => runCachedStart({ chatTokens: 2 })")
    finally:
        page.close()
    print("BENCH_JSON " + json.dumps(r))
    print("CACHED_START_JSON " + json.dumps(again))
    # The first start made Pyodide's start-up snapshot; the second page's worker started from it.
    assert r["runtime"]["snapshot"] == "stored", r["runtime"]  # snapshot_error says why not
    assert again["runtime"]["snapshot"] == "hit", again["runtime"]
    assert 0 < again["ready_ms"] < again["loaded_ms"] < again["first_token_ms"]
    assert again["chat_text"] == r["chat_text"]  # same greedy answer from the restored runtime
    assert r["adapter"] is not None and r["runtime_ready_ms"] > 0
    # The second load comes from the browser's model cache, and streaming produced a first token.
    assert "hit" in r["cache_states"]
    assert 0 < r["cached_load_ms"] <= r["cached_load_to_first_token_ms"]
    assert r["chat_text"]
    py = r["python"]
    assert py["decoded"] == 6 and len(py["issue_s"]) == 5 == len(py["decode_step_s"])
    # Issuing a step from Python is part of the step, so it can never exceed it.
    for issue, step in zip(py["issue_s"], py["decode_step_s"]):
        assert 0 < issue <= step
    # From the second decode step on, the step's commands were encoded while the GPU ran the previous
    # one: issuing it is one submit, a small part of the step (0.08-1.3 ms of 250-530 ms on SwiftShader on
    # CI's loaded 2 cores). Issue 7's 1 ms target is a benchmark number (printed above, in
    # docs/benchmarks.md), not asserted here: CI's machine measured 1.025 ms once. Encoding a step in
    # the issue path instead puts the whole step's encoding (hundreds of dispatches) there.
    assert min(py["issue_s"][1:]) < 0.05 * min(py["decode_step_s"][1:]), (py["issue_s"], py["decode_step_s"])
    assert py["dispatches_per_token"] > 0 and py["gpu_ms_by_op"]["lm_head"] > 0
    assert page.errors == []
