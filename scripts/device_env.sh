#!/bin/bash
# Sourced on the device by scripts/peer_bench.sh and scripts/ab_bench.sh (nothing can be downloaded there): the
# functions they share. Sourcing it runs nothing.
#   describe LABEL TREE   prints which code TREE holds (its commit where it is a checkout, its sources' fingerprint)
#   device_setup          webllm_py's hosts from the bundle of scripts/peer_bundle.sh: the Vulkan loader, NVIDIA's
#                         ICD, the wheels in /tmp/site, Node in /tmp/node (WEBLLM_NODE), PYTHONPATH=/tmp/site:$SRC,
#                         and $SRC/build/vendor (unpacked once a machine); DEVICE_SETUP=0 skips it (a machine with
#                         its own hosts, e.g. lavapipe here, trying a script)
#   vendor_tree TREE      npm `pyodide` + `webgpu` and the worker's wheels where TREE's dawn-bench looks
#   warm_dawn FILE OPTION one throwaway `dawn-bench` with OPTION (the subgroup-matrix one) on FILE, not recorded:
#                         the first Dawn process with the f16 toggle on a fresh machine ran at a third of the speed
#                         of the next ones (docs/benchmarks.md, "the first Dawn process with the f16 toggle")
#   quiet, record         below
# Variables: DIR (the bundle: gl/*.deb, whl/*.whl, node.xz, js.tar.xz), SRC (the tree that runs), LOG (record's).

describe() {
    # the code that runs: a git checkout's HEAD (+ its uncommitted changes) where it is one, and the code's own
    # fingerprint, which still names what ran where the copy's .git is stale (the device's) or absent (an archive)
    if git -C "$2" rev-parse --short HEAD > /dev/null 2>&1; then
        echo "$1tree $(git -C "$2" rev-parse --short HEAD)$(git -C "$2" diff --quiet HEAD -- . 2>/dev/null || echo " + changes")"
    fi
    echo "$1sources $(bash "$2/scripts/source_hash.sh" 2>/dev/null || echo "?") (scripts/source_hash.sh COMMIT gives a commit's)"
}

vendor_tree() {
    mkdir -p "$1/build/vendor/node_modules" "$1/build/vendor/wheels"
    tar xJf "$DIR/js.tar.xz" -C "$1/build/vendor/node_modules"
    cp "$DIR"/whl/jinja2-*.whl "$DIR"/whl/markupsafe-*.whl "$1/build/vendor/wheels/"
}

device_setup() {
    [ "${DEVICE_SETUP:-1}" != 0 ] || return 0
    # a warm machine keeps /tmp and the tree's ignored build/ between calls: what an earlier call unpacked is reused
    if ! { [ -x /tmp/node ] && [ -f /tmp/icd.json ] && [ -d /tmp/site/wgpu ]; }; then
        for f in "$DIR"/gl/*.deb; do dpkg -x "$f" /; done; ldconfig
        # NVIDIA's GLX Vulkan ICD fails headless; its EGL library works (as in scripts/device_bench.sh)
        printf '{"file_format_version":"1.0.1","ICD":{"library_path":"/usr/local/nvidia/lib64/libEGL_nvidia.so.0","api_version":"1.4.312"}}' > /tmp/icd.json
        python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$DIR"/whl/*.whl || exit 1
        xz -dc "$DIR/node.xz" > /tmp/node && chmod +x /tmp/node
    fi
    export VK_DRIVER_FILES=/tmp/icd.json LD_LIBRARY_PATH=/usr/local/nvidia/lib64:${LD_LIBRARY_PATH:-}
    export WEBLLM_NODE=/tmp/node PYTHONPATH=/tmp/site:$SRC PYTHONUNBUFFERED=1
    [ -d "$SRC/build/vendor/node_modules/webgpu" ] || vendor_tree "$SRC"
}

warm_dawn() {
    echo "+ warm-up, not recorded: dawn-bench --model $1 $2 --prompt-tokens 512 --decode-tokens 16"
    timeout 200 "${PY:-python3}" -m webllm_py dawn-bench --model "$1" --prompt-tokens 512 --decode-tokens 16 --gpu-reps 0 $2 2>/dev/null \
        | tail -1 | cut -c1-160
}

quiet() {  # with PEER_MAX_LOAD: wait (at most PEER_LOAD_WAIT s) for the 1-minute load average to fall below it
    [ -n "${PEER_MAX_LOAD:-}" ] || return 0
    local t0=$SECONDS
    while [ $((SECONDS - t0)) -lt "${PEER_LOAD_WAIT:-60}" ] && awk -v m="$PEER_MAX_LOAD" '{exit !($1 >= m)}' /proc/loadavg; do
        sleep 2
    done
    [ $((SECONDS - t0)) -lt 2 ] || echo "waited $((SECONDS - t0)) s for the load to fall below $PEER_MAX_LOAD: $(cut -d' ' -f1 /proc/loadavg)"
}

# record FILE ENGINE TIMEOUT CMD...: appends to $LOG one JSON line {file, engine, state, ...the command's last JSON
# line} or, where it failed, {..., error: its last error line}. "state": the GPU's clocks, power, temperature and
# utilization and the host's load just before the run (slow processes have shown up with nothing else visible).
record() {
    local f=$1 e=$2 t=$3; shift 3
    quiet
    echo "+ $*"
    local state
    state="$(nvidia-smi --query-gpu=clocks.sm,clocks.mem,power.draw,temperature.gpu,utilization.gpu --format=csv,noheader 2>/dev/null | head -1); load $(cut -d' ' -f1-3 /proc/loadavg)"
    timeout "$t" "$@" > /tmp/run.out 2> /tmp/run.err; local rc=$?
    python3 - "$f" "$e" "$rc" "$state" >> "$LOG" <<'PY'
import json, sys
f, e, rc, state = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
lines = [l for l in open("/tmp/run.out") if l.startswith("{")]
r = {"file": f, "engine": e, "state": state}
if rc == 0 and lines:
    r.update(json.loads(lines[-1]))
else:
    err = [l.strip() for l in open("/tmp/run.err", errors="replace") if l.strip() and not l.startswith("Warning")]
    r["error"] = "timed out" if rc == 124 else (err[-1][:160] if err else f"exit {rc}")
print(json.dumps(r))
PY
    tail -1 "$LOG" | cut -c1-400
}
