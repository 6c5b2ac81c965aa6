#!/bin/bash
# Whole-model A/B on the device: tree A (an older commit, or this tree with other arguments) against tree B
# (this one), the same random-weight GGUF files, alternating in one call, printed as one markdown table (B/A).
# Kernel timings say what a kernel does alone; this says what the change does to a model's prefill and decode.
#
# The bundle: `scripts/peer_bundle.sh DIR BASE` also puts `git archive BASE` into DIR/old.tar.xz (and its short
# hash into DIR/OLDREV): A is then BASE, B this tree. Without BASE (no old.tar.xz) A and B are both this tree and
# differ only in AB_A_ARGS / AB_B_ARGS (a flag against its default). On the device, with DIR carried:
#   PEER_DIR=DIR bash scripts/ab_bench.sh                         (B = the working tree it runs from)
# Env:
#   PEER_DIR       the bundle (default: the working directory)
#   AB_OLD         the A tree's archive (default: DIR/old.tar.xz where it exists); "none": A is this tree too (a
#                  bundle made with BASE can then also run argument A/Bs)
#   AB_FILES       shape:quant list (default: llama-3.2-1b:Q4_0 llama-3.1-8b:Q4_0); files are made in /tmp as
#                  peer_bench.sh makes them (the same names: a file either made is reused)
#   AB_ENGINES     of native, dawn, dawn-sgmat (default: all three; dawn-sgmat where dawn-bench has the option)
#   AB_ARGS        bench arguments of both (default: --prompt-tokens 512 --decode-tokens 128 --token-ids 32 --gpu-reps 0)
#   AB_A_ARGS, AB_B_ARGS   further arguments of one side only
#   AB_REPEAT      `--repeat` of both sides (the prompt and the decode timed this many times in a process, the
#                  medians reported; default 5) where both trees' bench has the option, else one of each
#   AB_REPS        rounds (default 2); in each, every file and engine runs A and B back to back, the order
#                  swapped each round (so neither side always runs first, on a warmer GPU)
#   AB_DEADLINE    rounds after the first start only while the script has run fewer than this many seconds
#   PEER_MAX_LOAD, PEER_LOAD_WAIT   as in peer_bench.sh (wait for a quiet host before each run)
#   PEER_WARMUP    0: no throwaway Dawn run with subgroup matrices before the rounds (default: one, as peer_bench.sh)
# A cell is the median of its runs with their range; "B/A" is the ratio of the medians (higher is faster).
# With `--profile --gpu-reps 3` in AB_ARGS the runs also give each op's GPU ms, tabled per file and engine after it
# (e.g. AB_A_ARGS="" AB_B_ARGS="--sgmat-f16-tiling 4,2,4,4,1,0,1,1,1": where a tile's time goes, op by op).
set -u
DIR=$(cd "${PEER_DIR:-$PWD}" && pwd)
SRC=$(cd "$(dirname "$0")/.." && pwd)
OUT=${OUT:-$DIR/out}; mkdir -p "$OUT"
LOG=$OUT/ab.jsonl; : > "$LOG"
date -u +%FT%TZ
. "$SRC/scripts/device_env.sh"
describe "B: " "$SRC"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null

device_setup  # DEVICE_SETUP=0: this machine's own hosts (AB_PYTHON, AB_SITE for its Python)
PY=${AB_PYTHON:-python3}
A_TREE=$SRC
OLD=${AB_OLD:-$DIR/old.tar.xz}
if [ "$OLD" != none ] && [ -f "$OLD" ]; then
    A_TREE=/tmp/ab-old; rm -rf $A_TREE; mkdir -p $A_TREE && tar xJf "$OLD" -C $A_TREE || exit 1
    if [ "${DEVICE_SETUP:-1}" != 0 ]; then vendor_tree $A_TREE; else ln -s "$SRC/build" $A_TREE/build; fi
    echo "A: $(cat "$DIR/OLDREV" 2>/dev/null || echo "old.tar.xz")"; describe "A: " $A_TREE
else
    echo "A: this tree${AB_A_ARGS:+ with $AB_A_ARGS}; B: this tree${AB_B_ARGS:+ with $AB_B_ARGS}"
fi

ARGS=${AB_ARGS:---prompt-tokens 512 --decode-tokens 128 --token-ids 32 --gpu-reps 0}
has_repeat() { (cd "$1" && PYTHONPATH="${AB_SITE:-/tmp/site}:$1" $PY -m webllm_py bench --help 2>/dev/null | grep -q -- --repeat); }
if [ "${AB_REPEAT:-5}" != 1 ] && has_repeat "$SRC" && has_repeat "$A_TREE"; then
    ARGS="$ARGS --repeat ${AB_REPEAT:-5}"
fi
SGMAT=$(cd "$SRC" && $PY -m webllm_py dawn-bench --help 2>/dev/null | grep -o -- '--[a-z-]*subgroup-matri[a-z-]*' | head -1)
# run SIDE ENGINE FILE: one run of a side's tree (its own folder first on sys.path: `python -m` puts the working
# directory there, so the run starts in that tree)
run() {
    local side=$1 e=$2 f=$3 tree=$SRC extra=${AB_B_ARGS:-} cmd=bench opt=""
    [ "$side" = B ] || { tree=$A_TREE; extra=${AB_A_ARGS:-}; }
    [ "$e" = native ] || cmd=dawn-bench
    [ "$e" != dawn-sgmat ] || opt=$SGMAT
    [ "$e" != dawn-sgmat ] || [ -n "$SGMAT" ] || { echo "dawn-sgmat: dawn-bench has no subgroup-matrix option"; return; }
    # shellcheck disable=SC2086  # the argument lists split on spaces
    record "$f" "$side/$e" 300 env -C "$tree" PYTHONPATH="${AB_SITE:-/tmp/site}:$tree" $PY -m webllm_py $cmd --model "$f" $ARGS $extra $opt
}
FILES=""
for sq in ${AB_FILES:-llama-3.2-1b:Q4_0 llama-3.1-8b:Q4_0}; do
    sh=${sq%%:*}; q=${sq##*:}; f=/tmp/$sh-$q.gguf
    vocab=""; [ ! -f "$DIR/vocab.gguf" ] || vocab="--vocab $DIR/vocab.gguf"
    [ -f "$f" ] || (cd "$SRC" && $PY scripts/random_gguf.py $vocab --shape "$sh" --quant "$q" "$f.part" && mv "$f.part" "$f") || continue
    FILES="$FILES $f"
done
read -r first _ <<< "$FILES"
if [ -n "$SGMAT" ] && [ "${PEER_WARMUP:-1}" != 0 ] && [ -n "$first" ]; then (cd "$SRC" && warm_dawn "$first" "$SGMAT"); fi
for rep in $(seq 1 "${AB_REPS:-2}"); do
    [ "$rep" = 1 ] || [ $SECONDS -lt "${AB_DEADLINE:-999999}" ] || { echo "round $rep: deadline (AB_DEADLINE) reached"; break; }
    order="A B"; [ $((rep % 2)) = 1 ] || order="B A"
    for f in $FILES; do
        for e in ${AB_ENGINES:-native dawn dawn-sgmat}; do
            for side in $order; do run "$side" "$e" "$f"; done
        done
    done
done

# -- the table -------------------------------------------------------------------------------------------------
$PY - "$LOG" <<'PY'
import json, os, sys
from statistics import median
rows = [json.loads(l) for l in open(sys.argv[1])]
runs = {}  # (file, engine, side) -> its runs
for r in rows:
    side, engine = r["engine"].split("/", 1)
    runs.setdefault((r["file"], engine, side), []).append(r)


def cell(rs, key):
    ok = [r[key] for r in rs if "error" not in r and key in r]
    if not ok:
        err = [r["error"] for r in rs if "error" in r]
        return None, ("failed: " + err[0].replace("|", "/")) if err else "not run"
    m = median(ok)
    text = f"{m:,.0f}" + (f" [{len(ok)} runs: {min(ok):,.0f}-{max(ok):,.0f}]" if len(ok) > 1 else "")
    return m, text + (f", {len(rs) - len(ok)} failed" if len(ok) < len(rs) else "")


print("\n| file | engine | metric | A | B | B/A |\n|---|---|---|---|---|---|")
same = []
for f, engine in dict.fromkeys((f, e) for f, e, _ in runs):
    a, b = runs.get((f, engine, "A"), []), runs.get((f, engine, "B"), [])
    for key, label in (("prefill_tok_s", "prefill tok/s"), ("decode_tok_s", "decode tok/s")):
        (ma, ta), (mb, tb) = cell(a, key), cell(b, key)
        ratio = f"{mb / ma:.3f}" if ma and mb else "-"
        print(f"| {os.path.basename(f)[:-5]} | {engine} | {label} | {ta} | {tb} | {ratio} |")
    ids = [{tuple(r["token_ids"]) for r in rs if r.get("token_ids")} for rs in (a, b)]
    if all(ids):  # every run of a side gave the same ids, and both sides the same
        same.append(f"{os.path.basename(f)} {engine}: greedy ids of A == B: {len(ids[0] | ids[1]) == 1}")
print("\n".join([""] + same))

# With --profile in AB_ARGS: each op kind's GPU ms (bench.profile_ops: a step's time in that op over all layers,
# host-clocked, so ops under ~1 ms carry a readback's jitter), the median over a side's runs
for f, engine in dict.fromkeys((f, e) for f, e, _ in runs):
    a, b = runs.get((f, engine, "A"), []), runs.get((f, engine, "B"), [])
    keys = sorted({k for r in a + b for k in r if k.startswith("gpu_ms_by_op")}, reverse=True)
    for key in keys:
        what = "a decode step" if key == "gpu_ms_by_op" else f"a prompt chunk of {key.rsplit('_', 1)[1]} tokens"
        ops = list(dict.fromkeys(op for r in a + b for op in r.get(key, {})))
        by_side = [
            {op: median(v) for op in ops if (v := [r[key][op] for r in rs if op in r.get(key, {})])} for rs in (a, b)
        ]
        print(f"\n{os.path.basename(f)[:-5]} {engine}: GPU ms of {what} by op\n\n| op | A | B | B - A |\n|---|---|---|---|")
        for op in sorted(ops, key=lambda o: -max(s.get(o, 0) for s in by_side)):
            va, vb = by_side[0].get(op), by_side[1].get(op)
            diff = f"{vb - va:+.3f}" if va is not None and vb is not None else "-"
            print(f"| {op} | {'-' if va is None else f'{va:.3f}'} | {'-' if vb is None else f'{vb:.3f}'} | {diff} |")
        tot = [sum(s.values()) for s in by_side]
        print(f"| total | {tot[0]:.3f} | {tot[1]:.3f} | {tot[1] - tot[0]:+.3f} |")
PY
