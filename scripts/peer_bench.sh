#!/bin/bash
# The peer table on the device (issues 17, 22): llama.cpp built with CUDA, webllm_py native (wgpu over
# Vulkan) and webllm_py on Dawn (Chrome's WebGPU engine: Pyodide under Node, npm `webgpu`) on the same
# random-weight GGUF files, in one device call, printed as one markdown table (ratios vs llama.cpp).
#
# The bundle: `scripts/peer_bundle.sh DIR` on the CPU machine puts into DIR the tree (`git archive HEAD`,
# this script included), Node 20, npm `webgpu` + `pyodide`, the wheels, the Vulkan loader deb, the Llama 3
# vocabulary and llama.cpp's sources pruned from the PyPI `llama-cpp-python` 0.3.36 sdist (~49 MiB in all).
# On the device, with DIR carried (the device tool's `carry`):
#   cd DIR && mkdir -p src && tar xJf src.tar.xz -C src && bash src/scripts/peer_bench.sh
# Env:
#   PEER_DIR         the bundle (default: the working directory)
#   LLAMA_BIN        a folder with a built llama-bench and its lib*.so; default /tmp/llama-bin, built there from
#                    DIR/llama.cpp.tar.xz (CUDA, sm_90: 250 s on the H200 machine's 16 cores; 574 s on 8 cores of the
#                    H100 machine while webllm_py cells ran on the other 8, loading the host) unless a previous
#                    call on the same warm machine left it. (Packed, llama-bench + libs are 43 MB as tar.xz: over
#                    what a device call returns per file, 16 MiB, and too much to carry beside this bundle.)
#   PEER_BUILD_ONLY  1: build llama-bench into /tmp/llama-bin and stop
#   PEER_FILES       shape:quant list (default: the 1B and 8B Llama shapes x Q4_0, Q4_K_M)
#   PEER_DECODE      decode tokens (default 256)
#   PEER_REPEAT      webllm_py times the prompt and the decode this many times in each process and reports the
#                    medians (`bench --repeat`; default 5, llama-bench's own -r after its warm-up: its cells are
#                    means of 5); 1: one of each, as before `bench` had the option
#   PEER_REPS        runs of each webllm_py cell (default 1), the engines alternating within a round; with more
#                    than one a cell shows the median and the range. Every run's JSON line also holds the
#                    machine's state just before it ("state": GPU clocks, power, temperature, utilization, the
#                    host's load average): some processes ran 2-3x slow on the H200 with nothing else visible
#                    (docs/benchmarks.md, "the peer table after issue 22's second round")
#   PEER_DEADLINE    with PEER_REPS > 1: rounds after the first (each over all files) start only while the script
#                    has run fewer than this many seconds (default: no limit), so a device call's time bounds them
#   PEER_LLAMA_LAST  1: the llama.cpp cells after all webllm_py cells (a build started in the background, e.g.
#                    `PEER_BUILD_ONLY=1 ... &`, can then overlap the webllm_py runs); PEER_LLAMA_WAIT seconds
#                    (default 0) to wait for $LLAMA_BIN/llama-bench to appear before them
#   PEER_MAX_LOAD    wait, before each webllm_py run, for the host's 1-minute load average to fall below this (at
#                    most PEER_LOAD_WAIT seconds a run, default 60; default: no wait). The slow processes of every
#                    table so far ran at host loads of 8-18 (a llama.cpp build or a GGUF writer on the other cores,
#                    or just after): the same cells at load ~2 ran normally (docs/benchmarks.md, "the peer table
#                    with two runs a cell"); 4 is a sensible value
#   PEER_FILE_WAIT   seconds to wait for each file to appear (another process making them, renamed into place
#                    when whole) before making it here (default 0)
#   PEER_WARMUP      0: no throwaway run. Default: one short `dawn-bench` with the subgroup-matrix option on the
#                    first file before the table, not recorded: the first Dawn process with the f16 toggle on a
#                    fresh machine ran at a third of the speed of the next ones (prefill and decode alike:
#                    docs/benchmarks.md, "the first Dawn process with the f16 toggle")
# Columns: llama.cpp `llama-bench -fa 1 -ngl 99`: pp512 (`-p 512 -n 0`) and tg256 at depth 512
# (`-p 0 -n 256 -d 512`); webllm_py `bench --model F --prompt-tokens 512 --decode-tokens 256` (prefill of the
# 512-token prompt, then decode after it) natively and as `dawn-bench` (same arguments); a "Dawn + subgroup
# matrices" column when `dawn-bench --help` offers a subgroup-matrix option. A cell that did not run says why.
set -u
DIR=$(cd "${PEER_DIR:-$PWD}" && pwd)
SRC=$(cd "$(dirname "$0")/.." && pwd)
OUT=${OUT:-$DIR/out}; mkdir -p "$OUT"
LOG=$OUT/peer.jsonl; : > "$LOG"
. "$SRC/scripts/device_env.sh"
date -u +%FT%TZ
# $SRC's code: a checkout's HEAD (+ changes) where it is one, else the bundle's `git archive` (REV)
git -C "$SRC" rev-parse --short HEAD > /dev/null 2>&1 || echo "tree $(cat "$DIR/REV" 2>/dev/null || echo "?")"
describe "" "$SRC"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader

# -- llama.cpp: a built llama-bench, or build it ---------------------------------------------------------------
build_llama() {
    local t0=$SECONDS b=/tmp/llama.cpp
    mkdir -p $b && tar xJf "$DIR/llama.cpp.tar.xz" -C /tmp || return 1
    cmake -S $b -B $b/build -G Ninja -DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 -DCMAKE_BUILD_TYPE=Release \
        -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
        -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF > /tmp/llama-cmake.log 2>&1 || { tail -20 /tmp/llama-cmake.log; return 1; }
    cmake --build $b/build -j "$(nproc)" --target llama-bench > /tmp/llama-build.log 2>&1 \
        || { grep -m5 -i error /tmp/llama-build.log; tail -5 /tmp/llama-build.log; return 1; }
    mkdir -p /tmp/llama-bin && cp $b/build/bin/llama-bench /tmp/llama-bin/ \
        && find $b/build -name 'lib*.so*' -exec cp -P {} /tmp/llama-bin/ \;
    echo "llama.cpp built in $((SECONDS - t0)) s"
}
if [ -z "${LLAMA_BIN:-}" ]; then
    LLAMA_BIN=/tmp/llama-bin
    [ -x $LLAMA_BIN/llama-bench ] || build_llama || echo "llama.cpp: build failed"
fi
[ -z "${PEER_BUILD_ONLY:-}" ] || exit 0
export LD_LIBRARY_PATH=$LLAMA_BIN:${LD_LIBRARY_PATH:-}  # (device_env.sh adds NVIDIA's)

# -- webllm_py's hosts: Vulkan loader, NVIDIA's ICD, wheels, Node + npm packages ------------------------------
device_setup
cd "$SRC" || exit 1

# -- the runs: each appends one JSON line {file, engine, ...} to $LOG ------------------------------------------
DEC=${PEER_DECODE:-256}
A="--prompt-tokens 512 --decode-tokens $DEC --token-ids 32 --gpu-reps 0"
if [ "${PEER_REPEAT:-5}" != 1 ] && python3 -m webllm_py bench --help 2>/dev/null | grep -q -- --repeat; then
    A="$A --repeat ${PEER_REPEAT:-5}"
fi
SGMAT=$(python3 -m webllm_py dawn-bench --help 2>/dev/null | grep -o -- '--[a-z-]*subgroup-matri[a-z-]*' | head -1)
echo "dawn-bench subgroup-matrix option: ${SGMAT:-none}"
llama() {  # llama FILE: pp512 and tg256 at depth 512, one JSON line
    local f=$1
    echo "+ llama-bench -m $f -fa 1 -ngl 99 -p 512 -n 0 ; -p 0 -n 256 -d 512"
    { timeout 240 $LLAMA_BIN/llama-bench -m "$f" -fa 1 -ngl 99 -p 512 -n 0 -o jsonl
      timeout 240 $LLAMA_BIN/llama-bench -m "$f" -fa 1 -ngl 99 -p 0 -n 256 -d 512 -o jsonl; } > /tmp/llama.out 2> /tmp/llama.err
    python3 - "$f" >> "$LOG" <<'EOF'
import json, sys
r = {"file": sys.argv[1], "engine": "llama.cpp"}
for l in open("/tmp/llama.out"):
    if l.startswith("{"):
        j = json.loads(l)
        key = "prefill_tok_s" if j["n_prompt"] else "decode_tok_s"
        r[key] = round(j["avg_ts"], 1); r["build_commit"] = j.get("build_commit")
if "prefill_tok_s" not in r and "decode_tok_s" not in r:
    err = [l.strip() for l in open("/tmp/llama.err", errors="replace") if l.strip()]
    r["error"] = err[-1][:160] if err else "no output"
print(json.dumps(r))
EOF
    tail -1 "$LOG"
}
round() {  # one run of each webllm_py engine on file $1
    record "$1" native 300 python3 -m webllm_py bench --model "$1" $A
    record "$1" dawn 300 python3 -m webllm_py dawn-bench --model "$1" $A
    if [ -n "$SGMAT" ]; then record "$1" dawn-sgmat 300 python3 -m webllm_py dawn-bench --model "$1" $A "$SGMAT"; fi
}
G="python3 scripts/random_gguf.py --vocab $DIR/vocab.gguf"
for sq in ${PEER_FILES:-llama-3.2-1b:Q4_0 llama-3.2-1b:Q4_K_M llama-3.1-8b:Q4_0 llama-3.1-8b:Q4_K_M}; do
    sh=${sq%%:*}; q=${sq##*:}; f=/tmp/$sh-$q.gguf
    echo "=== $sh $q"
    for _ in $(seq 1 "${PEER_FILE_WAIT:-0}"); do [ -f "$f" ] && break; sleep 1; done
    [ -f "$f" ] || $G --shape "$sh" --quant "$q" "$f" || continue
    ls -l "$f"
    if [ -n "$SGMAT" ] && [ "${PEER_WARMUP:-1}" != 0 ] && [ -z "${warmed:-}" ]; then
        warmed=1; warm_dawn "$f" "$SGMAT"
    fi
    if [ -z "${PEER_LLAMA_LAST:-}" ] && [ -x $LLAMA_BIN/llama-bench ]; then llama "$f"; fi
    FILES="${FILES:-} $f"
    round "$f"
done
# further rounds over all files (a slow process then shows up as one outlier among a cell's runs)
for rep in $(seq 2 "${PEER_REPS:-1}"); do
    for f in $FILES; do
        [ $SECONDS -lt "${PEER_DEADLINE:-999999}" ] || { echo "round $rep: deadline (PEER_DEADLINE) reached"; break 2; }
        round "$f"
    done
done
if [ -n "${PEER_LLAMA_LAST:-}" ]; then
    for _ in $(seq 1 "${PEER_LLAMA_WAIT:-0}"); do [ -x $LLAMA_BIN/llama-bench ] && break; sleep 1; done
    if [ -x $LLAMA_BIN/llama-bench ]; then for f in $FILES; do llama "$f"; done; else echo "llama.cpp: no llama-bench in $LLAMA_BIN"; fi
fi

# -- the table -------------------------------------------------------------------------------------------------
python3 - "$LOG" <<'EOF'
import json, os, sys
from statistics import median
rows = [json.loads(l) for l in open(sys.argv[1])]
engines = ["llama.cpp", "native", "dawn"] + (["dawn-sgmat"] if any(r["engine"] == "dawn-sgmat" for r in rows) else [])
names = {"llama.cpp": "llama.cpp CUDA", "native": "webllm_py native", "dawn": "webllm_py on Dawn",
         "dawn-sgmat": "Dawn + subgroup matrices"}
files = list(dict.fromkeys(r["file"] for r in rows))
runs = {}  # (file, engine) -> its runs, in order
for r in rows:
    runs.setdefault((r["file"], r["engine"]), []).append(r)
by = {k: v[0] for k, v in runs.items()}


greedy = []
print("\n| file | metric | " + " | ".join(names[e] for e in engines) + " |")
print("|---|---|" + "---|" * len(engines))
for f in files:
    ref = by.get((f, "llama.cpp"), {})
    for key, label in (("prefill_tok_s", "prefill 512 (pp512), tok/s"), ("decode_tok_s", "decode (tg256 @ depth 512), tok/s")):
        cells = []
        for e in engines:
            rs = runs.get((f, e), [])
            ok = [r[key] for r in rs if "error" not in r and key in r]
            if not rs:
                cells.append("not run")
            elif not ok:
                err = [r["error"] for r in rs if "error" in r]
                cells.append("failed: " + err[0].replace("|", "/") if err else "-")
            else:
                m = median(ok)
                cell = f"{m:,.0f}" + (f" ({m / ref[key]:.2f}x)" if e != "llama.cpp" and ref.get(key) else "")
                if len(rs) > 1:  # the median of the runs, their range, and how many failed
                    cell += f" [{len(ok)} runs: {min(ok):,.0f}-{max(ok):,.0f}" + (f", {len(rs) - len(ok)} failed" if len(ok) < len(rs) else "") + "]"
                cells.append(cell)
        print(f"| {os.path.basename(f)[:-5]} | {label} | " + " | ".join(cells) + " |")
    n = by.get((f, "native"), {})
    for e in ("dawn", "dawn-sgmat"):
        d = by.get((f, e), {})
        if n.get("token_ids") and d.get("token_ids"):
            greedy.append(f"{os.path.basename(f)}: first 32 greedy ids, {names[e]} == native: {n['token_ids'] == d['token_ids']}")
print("\n".join([""] + greedy))
EOF
