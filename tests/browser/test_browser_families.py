"""Mixtral and Phi-2 in the browser: tiny random Hugging Face checkpoints (tests/hf_models.py, the
variants of tests/test_model_families.py) loaded in Pyodide on WebGPU (SwiftShader) from their
safetensors directory, greedy tokens identical to transformers' on CPython.

Mixtral runs its router top-k and expert matvecs as WGSL on SwiftShader (each prompt token of the
prefill chunk routes on its own; decode reads only the chosen experts); Phi-2 its LayerNorms,
partial rotary, q/k norms and parallel attention + GELU MLP. The checkpoint is served by a dev server
of this test's own (the package server serves only the default model), to a page of its own.
"""

from __future__ import annotations

import pytest

from webllm_py import serve

from ..hf_models import build
from ..reference import hf_greedy, prompt_ids
from ..model_checks import LONG, PREFILL_CHUNK  # the 20-token prompt prefills in chunks of 8, 8 and 4
from ..hf_models import FAMILY_VARIANTS
from .conftest import open_page, run_python

pytestmark = [pytest.mark.browser, pytest.mark.slow]

N_TOKENS = 8
VARIANTS = [v for v in FAMILY_VARIANTS if v.name in ("mixtral-4x2", "phi2")]
FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")

BROWSER_RUN = """
import js
from webllm_py.engine import Engine
from webllm_py.sampling import SamplingParams

files = {{}}
for name in {files!r}:
    resp = await js.fetch("/models/" + name)
    files[name] = js.Uint8Array.new(await resp.arrayBuffer())
family_engine = await Engine.load(files, context_window=64, prefill_chunk={chunk})
try:
    _, token_ids = await family_engine.complete({ids!r}, params=SamplingParams(temperature=0.0),
                                                max_tokens={n}, ignore_eos=True)
    result = {{"tokens": token_ids, "arch": family_engine.config.arch,
              "adapter": family_engine.runtime_stats()["adapter"]}}
finally:
    family_engine.unload()
    del files, family_engine
result
"""


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    d = tmp_path_factory.mktemp("browser_family_models")
    return {v.name: build(v, d) for v in VARIANTS}


@pytest.mark.parametrize("variant", VARIANTS, ids=[v.name for v in VARIANTS])
def test_browser_greedy_tokens_equal_transformers(chromium, checkpoints, variant):
    path = checkpoints[variant.name]
    ids = prompt_ids(path, LONG)
    ref, _ = hf_greedy(path, ids, N_TOKENS)

    from pathlib import Path

    site = serve.build_site(models=[Path(path) / f for f in FILES])
    srv = serve.start_in_thread(port=0, site=site)
    page = open_page(chromium, serve.server_url(srv) + "script-tag.html")
    try:
        page.evaluate("() => webllm.ready()")
        out = run_python(page, BROWSER_RUN.format(files=FILES, chunk=PREFILL_CHUNK, ids=ids, n=N_TOKENS))
        assert "swiftshader" in out["adapter"].lower()
        assert out["arch"] == variant.family
        assert out["tokens"] == ref, (out["tokens"], ref)
        assert page.errors == []
    finally:
        page.close()
        srv.shutdown()
        srv.server_close()
