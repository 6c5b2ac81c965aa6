"""One-off check on a real GPU (device machine): every tiny random family model of
tests/test_model_families.py, run by our engine through native wgpu, against transformers on the CPU:
max relative logit error after a 20-token prompt (prefill chunks of 8) and 16 greedy tokens."""

import asyncio
import sys
import tempfile

import numpy as np

sys.path.insert(0, ".")
from tests.hf_models import build  # noqa: E402
from tests.reference import hf_greedy, hf_model  # noqa: E402
from tests.test_model_families import FAMILY_VARIANTS, LONG, N_GREEDY, TEXT  # noqa: E402
from webllm_py.engine import Engine  # noqa: E402
from webllm_py.gpu import request_device  # noqa: E402
from webllm_py.sampling import SamplingParams  # noqa: E402

device = asyncio.run(request_device("native"))
print(device.info.description, "fallback", device.info.is_fallback, flush=True)
d = tempfile.mkdtemp()
for v in FAMILY_VARIANTS:
    path = build(v, d)
    ids = hf_model(path)[1](TEXT).input_ids[:LONG]
    ref, ref_logits = hf_greedy(path, ids, N_GREEDY)
    engine = asyncio.run(Engine.load(path, device=device, context_window=128, prefill_chunk=8))
    ours = np.frombuffer(asyncio.run(engine.logits(ids)), np.float32)[: engine.config.vocab_size]
    _, toks = asyncio.run(
        engine.complete(ids, params=SamplingParams(temperature=0.0), max_tokens=N_GREEDY, ignore_eos=True)
    )
    err = np.abs(ours - ref_logits).max() / np.abs(ref_logits).max()
    print(v.name, "rel_logit_err", f"{err:.2e}", "greedy_equal", toks == ref, flush=True)
    engine.unload()
