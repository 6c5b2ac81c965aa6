"""SwiftShader: one prefill matmul dispatch of SmolLM2's shapes, by kernel variant, inside the worker.

Headless Chromium (the browser tests' settings, playwright.config.py) opens static/bench.html and runs
Python in the worker (webllm.runPython): Q4_1 weights shaped like SmolLM2-135M's layers (valid blocks:
small f16 scales, random nibbles), 37 tokens of x (the chat prompt's length), and for each variant
(a MatmulRowsTiling or a MatmulI8Tiling given to Linear) the ms of one dispatch: REPS dispatches
recorded into one submission, then a read back; variants alternate within each round, and each is
compiled before the first round. Prints ms per dispatch (min and median over the rounds) and each
variant's largest difference from the first variant's y.

    .venv/bin/python scripts/cached_start_bench.py is the whole returning visit; this is one kernel:
    .venv/bin/python scripts/sw_matmul_bench.py [ROUNDS] [--tokens N] [--qtype Q4_0|Q8_0] [TILING ...]
    .venv/bin/python scripts/sw_matmul_bench.py [ROUNDS] --head [TILING ...]   # the LM head, one token
    .venv/bin/python scripts/sw_matmul_bench.py [ROUNDS] --compile   # a chat's kernels, compile ms each
    .venv/bin/python scripts/sw_matmul_bench.py [ROUNDS] --ops       # the prefill's ms by op kind

Not a test: it asserts nothing.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# (name, N, K): SmolLM2-135M (hidden 576, FFN 1536, 9 heads of 64, 3 KV heads)
SHAPES = [
    ("ffn_up", 1536, 576, "Q4_1"),
    ("ffn_down", 576, 1536, "Q4_1"),
    ("attn_q", 576, 576, "Q4_1"),
    ("attn_kv", 192, 576, "Q4_1"),
]
# --head: the LM head's matvec (the Q8_0 token embedding, 49152 x 576) for one token, by MatvecTiling
HEAD = [("lm_head", 49152, 576, "Q8_0")]
HEAD_VARIANTS = [
    "MatvecTiling(wg=32, rows=8, split_k=False, shape_at_run_time=True)",
    "MatvecTiling(wg=32, rows=4, split_k=False, shape_at_run_time=True)",
]
# Variants: Python expressions of a tiling (planner names in scope); the first is the shipped one.
VARIANTS = [
    "MatmulRowsTiling(wg=8, rows=8, tm=4, shape_at_run_time=True)",
    "MatmulRowsTiling(wg=8, rows=4, tm=8, shape_at_run_time=True)",
    "MatmulRowsTiling(wg=8, rows=8, tm=8, shape_at_run_time=True)",
    "MatmulRowsTiling(wg=16, rows=4, tm=4, shape_at_run_time=True)",
    "MatmulRowsTiling(wg=4, rows=8, tm=4, shape_at_run_time=True)",
    "MatmulI8Tiling(stage=False, wg=8, rm=4, rn=8, planes=2)",
]

PY = """
import time, struct, random, statistics, js
from webllm_py.gpu.browser import BrowserDevice
from webllm_py.planner import MatmulRowsTiling, MatmulI8Tiling, MatvecTiling, Adapter
from webllm_py.linear import Linear
from webllm_py.formats.quants import GGMLType, TensorInfo, row_nbytes
from webllm_py.formats.source import BytesSource
from webllm_py.weights import upload_tensor
SHAPES, VARIANTS, ROUNDS, T, REPS = __ARGS__
dev = await BrowserDevice.create()
ad = Adapter.of(dev)
rnd = random.Random(0)
def blocks(qtype, n, k):  # valid blocks: f16 scale 0.01 (Q4_1: min -0.05), random quants
    nb, size = n * k // 32, {"Q4_1": 20, "Q8_0": 34, "Q4_0": 18}[qtype]
    raw = bytearray(rnd.randbytes(nb * size))
    head = struct.pack("<2e", 0.01, -0.05) if qtype == "Q4_1" else struct.pack("<e", 0.01)
    for b in range(nb):
        raw[size * b:size * b + len(head)] = head
    return bytes(raw)
params = dev.buffer_from(struct.pack("<4I", 0, T, 0, 0))
out = {"adapter": [dev.info.vendor, dev.info.architecture, dev.info.description], "swiftshader": ad.swiftshader,
       "packed_dot": ad.packed_dot, "shapes": {}}
for name, N, K, qtype in SHAPES:
    info = TensorInfo(name, (K, N), int(GGMLType[qtype]), 0, N * row_nbytes(GGMLType[qtype], K))
    w = upload_tensor(dev, BytesSource(blocks(qtype, N, K)), info)
    x = dev.buffer_from(struct.pack(f"<{T * K}f", *[rnd.uniform(-1, 1) for _ in range(T * K)]))
    runs = []
    for v in VARIANTS:
        tiling = eval(v)
        lin = Linear(dev, w, matvec=tiling) if T == 1 else Linear(dev, w, matmul=tiling)
        y = dev.create_buffer(4 * T * N)
        b = lin.bind(x, y, None if T == 1 else params)
        t0 = time.perf_counter()
        with dev.recorder() as rec:
            b.record(rec, T)
        ys = await dev.read_buffer(y, 0, 4 * T * N)
        first = 1e3 * (time.perf_counter() - t0)  # pipeline creation (the compile) + one dispatch
        runs.append((v, b, struct.unpack(f"<{T * N}f", ys), [], first))
    ref = runs[0][2]
    for _ in range(ROUNDS):
        for v, b, _y, ms, _f in runs:
            await dev.read_buffer(params, 0, 4)
            t0 = time.perf_counter()
            rec = dev.recorder()
            for _ in range(REPS):
                b.record(rec, T)
            rec.submit()
            await dev.read_buffer(params, 0, 4)
            ms.append(1e3 * (time.perf_counter() - t0) / REPS)
    out["shapes"][f"{name} {N}x{K}"] = {
        v: {"min": round(min(ms), 2), "median": round(statistics.median(ms), 2),
            "max_diff": max(abs(a - c) for a, c in zip(yv, ref)), "max_y": max(abs(c) for c in ref), "first_ms": round(first)}
        for v, _b, yv, ms, first in runs}
out
"""


# --compile: the kernels of a 2-token answer to the 37-token chat prompt (SmolLM2, as the chat does),
# each compiled again from a fresh source (a comment prepended), one at a time: ms per kernel.
PY_COMPILE = """
import time, random, js, webllm_py
from pyodide.ffi import to_js
from webllm_py.formats.source import JSBufferSource
from webllm_py.sampling import SamplingParams
resp = await js.fetch("/models/SmolLM2-135M-Instruct.Q4_1.gguf")
chat = await webllm_py.create(JSBufferSource(js.Uint8Array.new(await resp.arrayBuffer())))
eng = chat.engine
tok = eng.tokenizer
prompt = tok.encode(tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}], add_generation_prompt=True), add_special=False)
async for _ in eng.generate(prompt, SamplingParams(temperature=0.0), max_tokens=1):
    pass
dev = eng.device
out = {"prompt_tokens": len(prompt), "kernels": []}
for k in dev.kernels_made:
    src = f"// {random.random()}\\n" + k.source
    ms = []
    for _ in range(__ROUNDS__):
        src = f"// {random.random()}\\n" + k.source
        t = time.perf_counter()
        mod = dev.raw.createShaderModule(to_js({"code": src}, dict_converter=js.Object.fromEntries))
        pl = dev.raw.createPipelineLayout(to_js({"bindGroupLayouts": [k.layout]}, dict_converter=js.Object.fromEntries))
        await dev.raw.createComputePipelineAsync(to_js({"layout": pl, "compute": {"module": mod, "entryPoint": "main"}}, dict_converter=js.Object.fromEntries))
        ms.append(round(1e3 * (time.perf_counter() - t)))
    out["kernels"].append([k.label, len(k.source), ms])
chat.unload()
out
"""

# --ops: after that chat, one 37-token prefill step's op kinds (each recorded for every layer in one
# submission, as bench.html's prefill_ms_by_op), ms, ROUNDS times
PY_OPS = (
    PY_COMPILE.split("dev = eng.device")[0]
    + """
dev, m, n_pf = eng.device, eng.model, len(prompt)
eng.reset(0)
eng._cached[0] = []
eng._stage_step(0, [0] * n_pf)
out = {"prompt_tokens": n_pf, "ops": {}}
names = [k for k in vars(m.layers[0]) if hasattr(getattr(m.layers[0], k), "record")]
for _ in range(__ROUNDS__):
    for name in names:
        await dev.read_buffer(m.state.logits, 0, 4)
        t3 = time.perf_counter()
        with dev.recorder() as rec:
            for layer in m.layers:
                getattr(layer, name).record(rec, n_pf)
        await dev.read_buffer(m.state.logits, 0, 4)
        out["ops"].setdefault(name, []).append(round(1e3 * (time.perf_counter() - t3), 1))
for name in ("lm_head",):
    await dev.read_buffer(m.state.logits, 0, 4)
    t3 = time.perf_counter()
    with dev.recorder() as rec:
        m.lm_head.record(rec, 1)
    await dev.read_buffer(m.state.logits, 0, 4)
    out["ops"]["lm_head (1 token)"] = [round(1e3 * (time.perf_counter() - t3), 1)]
eng.reset(0)
chat.unload()
out
"""
)


def main(argv: list[str]) -> int:
    rounds = int(next((a for a in argv if a.isdigit()), "5"))
    tokens = int(argv[argv.index("--tokens") + 1]) if "--tokens" in argv else 37
    head = "--head" in argv
    variants = [a for a in argv if a.startswith("Mat")] or (HEAD_VARIANTS if head else VARIANTS)
    tokens = 1 if head else tokens
    from playwright.sync_api import sync_playwright

    from webllm_py import serve

    spec = importlib.util.spec_from_file_location("webllm_playwright_config", ROOT / "playwright.config.py")
    cfg = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cfg)
    srv = serve.start_in_thread(port=0)
    pw = sync_playwright().start()
    browser = pw.chromium.launch(executable_path=cfg.CHROMIUM, args=cfg.LAUNCH_ARGS, headless=True)
    try:
        page = browser.new_page()
        page.set_default_timeout(cfg.TIMEOUT_MS)
        page.goto(serve.server_url(srv) + "bench.html")
        shapes = HEAD if head else SHAPES
        if "--qtype" in argv:  # the same shapes in another weight type (Q4_1, Q4_0, Q8_0)
            shapes = [(name, N, K, argv[argv.index("--qtype") + 1]) for name, N, K, _q in shapes]
        args = repr((shapes, variants, rounds, tokens, 3))
        code = PY.replace("__ARGS__", args)
        if "--compile" in argv or "--ops" in argv:
            code = (PY_COMPILE if "--compile" in argv else PY_OPS).replace("__ROUNDS__", str(rounds))
        r = page.evaluate("(code) => webllm.ready().then(() => webllm.runPython(code))", code)
    finally:
        browser.close()
        pw.stop()
        srv.shutdown()
    if "--ops" in argv:
        print(f"prefill of {r['prompt_tokens']} tokens, ms per op kind (all layers), each round:")
        for name, ms in r["ops"].items():
            print(f"  {name:24s} {ms}")
        return 0
    if "--compile" in argv:
        print(f"prompt {r['prompt_tokens']} tokens; compile ms per kernel (fresh sources, one at a time):")
        for label, n, ms in r["kernels"]:
            print(f"  {label:40s} {n:6d} chars  {ms}")
        print(f"  all: {sum(min(ms) for _l, _n, ms in r['kernels'])} ms (sum of mins)")
        return 0
    print(json.dumps({k: v for k, v in r.items() if k != "shapes"}))
    for shape, vs in r["shapes"].items():
        print(shape)
        for v, s in vs.items():
            print(
                f"  {s['min']:7.2f} min {s['median']:7.2f} median  diff {s['max_diff']:.2e} (|y| {s['max_y']:.1f})  first {s['first_ms']} ms  {v}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
