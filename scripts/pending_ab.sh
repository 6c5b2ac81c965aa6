#!/bin/bash
# The device measurements still owed to changes built on the CPU machine (issue 22), each an A/B of
# scripts/ab_bench.sh in one call, so a device session spends its minutes on numbers, not on typing. Edit the
# list as items are measured (docs/benchmarks.md, "Built while no device machine came: ..." says what each is).
#
# Bundle first (CPU machine; BASE = the tree before the unmeasured kernel changes):
#   scripts/peer_bundle.sh .dev/p 8f97898 && rm .dev/p/src.tar.xz
# then one device call per step, carrying the bundle (a fresh machine sets itself up in ~60 s of each call):
#   run(carry=[".dev/p"], command="PEER_DIR=.dev/p bash scripts/pending_ab.sh kernels")
# Steps (each fits one 600 s call):
#   check    prefill_attention_check.py --dawn: every prompt-attention form (the lazy one included) against numpy
#            on the real subgroup-matrix builtins, head_dim 128
#   kernels  A = BASE, B = this tree, 8B and 1B Q4_0, native and Dawn with subgroup matrices, per-op GPU ms:
#            row_scale at 256 threads (868f0f0: qkv / gate_up / w_down / wo rows, Dawn + sgmat), the sgmat
#            attention's staging loads issued together (c257259: 8B attention, Dawn + sgmat), the lanes form's
#            (dbefddf: 8B attention natively, 1B attention on both)
#   lazy     this tree, the default prompt attention against PrefillTiling.lazy 8 (43654c3), Dawn + sgmat, 8B
#            (its default is the sgmat form) and 1B (lanes by default; B forces the sgmat form with lazy), and
#            at 8B the lazy form with 48 keys a tile (47,360 bytes of workgroup memory at head_dim 128)
#   depth    this tree, decode with 2 steps in flight (the default) against 3 (f51015f: Engine.decode_depth),
#            Dawn and native, 1B and 8B Q4_0, 128-token decodes after a 64-token prompt
# Revert (or leave off) whatever loses; make the default what wins, with its numbers in docs/benchmarks.md.
set -u
cd "$(dirname "$0")/.." || exit 1
export PEER_DIR=${PEER_DIR:-.dev/p} PEER_WARMUP=0
OUT=${OUT:-$PEER_DIR/out}
PROFILE="--prompt-tokens 512 --decode-tokens 16 --token-ids 16 --gpu-reps 3 --profile"
case "${1:-}" in check | kernels | lazy | depth) date -u +%FT%TZ ;; esac
case "${1:-}" in
check)
    timeout 500 bash scripts/on_device.sh python3 scripts/prefill_attention_check.py --dawn
    ;;
kernels)
    AB_ENGINES="dawn-sgmat native" AB_FILES="llama-3.1-8b:Q4_0 llama-3.2-1b:Q4_0" AB_ARGS="$PROFILE" \
        AB_REPS=2 AB_REPEAT=3 AB_DEADLINE=400 OUT=$OUT/kernels timeout 560 bash scripts/ab_bench.sh
    ;;
lazy)
    # file:tiling (the lazy form at 32 keys a tile, and at 48: its fewer tiles, O no longer folded a tile)
    for ft in llama-3.1-8b:Q4_0:16,32,1,1,1,0,1,0,1,8 llama-3.2-1b:Q4_0:16,32,1,1,1,0,1,0,1,8 \
        llama-3.1-8b:Q4_0:16,48,1,1,1,0,1,0,1,8; do
        f=${ft%:*}; t=${ft##*:}
        AB_OLD=none AB_B_ARGS="--prefill-attention-tiling $t" AB_ENGINES=dawn-sgmat AB_FILES=$f AB_ARGS="$PROFILE" \
            AB_REPS=2 AB_REPEAT=3 OUT=$OUT/lazy-${f%%:*}-$t timeout 170 bash scripts/ab_bench.sh
    done
    ;;
depth)
    AB_OLD=none AB_B_ARGS="--decode-depth 3" AB_ENGINES="dawn native" AB_FILES="llama-3.2-1b:Q4_0 llama-3.1-8b:Q4_0" \
        AB_ARGS="--prompt-tokens 64 --decode-tokens 128 --token-ids 16 --gpu-reps 0" AB_REPS=2 AB_REPEAT=3 \
        AB_DEADLINE=400 OUT=$OUT/depth timeout 560 bash scripts/ab_bench.sh
    ;;
*)
    echo "usage: PEER_DIR=DIR bash scripts/pending_ab.sh check|kernels|lazy|depth (see the header)" >&2
    exit 2
    ;;
esac
date -u +%FT%TZ
