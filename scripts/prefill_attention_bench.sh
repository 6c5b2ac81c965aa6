#!/bin/bash
# attention_prefill's tilings on the device machine, native wgpu and Dawn: for each GGUF given, a
# 512-token prompt in one chunk (the GPU default; FLAGS="... --prefill-chunk 128" for 128) with
# --profile, one run per tiling (TQ,TK,L[,R] for bench's --prefill-attention-tiling; "default" = the
# planner's), printing prefill tok/s, the GPU ms of the last chunk's attention (all layers) and of
# the whole chunk, and the greedy ids (equal across tilings unless a near tie flips). Needs the environment go.sh sets up (PYTHONPATH, WEBLLM_NODE).
#   bash scripts/prefill_attention_bench.sh /tmp/llama-3.2-1b-Q4_0.gguf /tmp/llama-3.1-8b-Q4_0.gguf
# VARIANTS, CMDS and FLAGS override the lists below.
set -u
CMDS=${CMDS:-"bench dawn-bench"}
FLAGS=${FLAGS:-"--prompt-tokens 512 --prefill-chunk 512 --decode-tokens 8 --gpu-reps 0 --token-ids 8 --profile"}
for f in "$@"; do
    case "$f" in
        *8b* | *8B*) lanes=8 ;;
        *) lanes=4 ;;
    esac
    for cmd in $CMDS; do
        for v in ${VARIANTS:-default 16,32,1 4,32,$lanes 4,32,$((12 - lanes)) 8,32,$lanes,2 16,32,$lanes,4}; do
            t=(); [ "$v" != default ] && t=(--prefill-attention-tiling "$v")
            out=$(timeout 300 python3 -m webllm_py $cmd --model "$f" $FLAGS "${t[@]}" 2>/tmp/pab_err.txt | tail -1)
            [ "${out:0:1}" = "{" ] || { echo "$cmd $f $v: $(tail -2 /tmp/pab_err.txt)"; continue; }
            echo "$out" | python3 -c "
import json, sys
r = json.loads(sys.stdin.read())
ops = next((v for k, v in r.items() if k.startswith('gpu_ms_by_op_prefill_')), {})
print(json.dumps(dict(cmd='$cmd', model='$(basename "$f")', tiling='$v', prefill_tok_s=r.get('prefill_tok_s'),
    attention_ms=ops.get('attention'), chunk_ms=round(sum(ops.values()), 2), kv_cache=r.get('kv_cache'),
    ids=r.get('token_ids'))))"
        done
    done
done
