#!/bin/bash
# Runs one command on the device with webllm_py's hosts set up from the bundle (scripts/peer_bundle.sh), as
# scripts/peer_bench.sh and scripts/ab_bench.sh run theirs: the kernel benches need the same environment (Node for
# the Dawn host, NVIDIA's Vulkan ICD, the wheels) and fail without it ("node not found", "no Mesa 25 lavapipe").
#   PEER_DIR=.dev/p bash scripts/on_device.sh python3 scripts/sgmat_bench.py --kernels occ --reps 10
# On a warm machine where a bundle's setup already ran, the setup is not repeated (the unpacked Node and wheels
# are reused); DEVICE_SETUP=0 skips it, as in device_env.sh.
set -u
DIR=$(cd "${PEER_DIR:-$PWD}" && pwd)
SRC=$(cd "$(dirname "$0")/.." && pwd)
. "$SRC/scripts/device_env.sh"
if [ -x /tmp/node ] && [ -f /tmp/icd.json ] && [ -d /tmp/site/wgpu ] && [ -d "$SRC/build/vendor/node_modules/webgpu" ]; then
    export VK_DRIVER_FILES=/tmp/icd.json LD_LIBRARY_PATH=/usr/local/nvidia/lib64:${LD_LIBRARY_PATH:-} \
        WEBLLM_NODE=/tmp/node PYTHONPATH=/tmp/site:$SRC PYTHONUNBUFFERED=1
else
    device_setup
fi
cd "$SRC" && exec "$@"
