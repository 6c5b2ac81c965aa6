#!/bin/bash
# Runs one command on the device with webllm_py's hosts set up from the bundle (scripts/peer_bundle.sh), as
# scripts/peer_bench.sh and scripts/ab_bench.sh run theirs: the kernel benches need the same environment (Node for
# the Dawn host, NVIDIA's Vulkan ICD, the wheels) and fail without it ("node not found", "no Mesa 25 lavapipe").
#   PEER_DIR=.dev/p bash scripts/on_device.sh python3 scripts/sgmat_bench.py --kernels occ --reps 10
# On a warm machine the setup's unpacking is not repeated (device_setup reuses the Node and wheels an earlier call
# unpacked); DEVICE_SETUP=0 skips it, as in device_env.sh.
set -u
DIR=$(cd "${PEER_DIR:-$PWD}" && pwd)
SRC=$(cd "$(dirname "$0")/.." && pwd)
. "$SRC/scripts/device_env.sh"
device_setup
cd "$SRC" && exec "$@"
