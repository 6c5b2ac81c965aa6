#!/bin/bash
# Decode attention on the device machine (H100, native wgpu over Vulkan): attention_step checked
# against numpy, its kernel timings (scripts/attention_step_bench.py: the step's tilings and the
# unfused form), and decode tok/s with it (default and other tilings) and without it
# (PagedAttention(fused=False): RoPE+kv_write, attention_decode, attention_combine), both orders.
# Run after `bash scripts/device_bench.sh none` (Vulkan + wgpu set up):
#   bash scripts/device_bench.sh none; bash scripts/attention_bench.sh
set -u
OUT=${OUT:-.}
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 VK_DRIVER_FILES=/tmp/icd.json
export LD_LIBRARY_PATH=/usr/local/nvidia/lib64:${LD_LIBRARY_PATH:-}
echo "+ python scripts/attention_step_check.py"
timeout 120 python3 scripts/attention_step_check.py 2>"$OUT/check_err.txt" | tee "$OUT/attention_check.jsonl" | cut -c1-230; tail -3 "$OUT/check_err.txt"
echo "+ python scripts/attention_step_bench.py"
timeout 150 python3 scripts/attention_step_bench.py 2>"$OUT/step_err.txt" | tee "$OUT/step.jsonl" | cut -c1-230; tail -3 "$OUT/step_err.txt"
# bench with PagedAttention's defaults changed: $1 = "unfused" or a tiling "wg,chunk,splits,min_split" or "default"
variant() {
    local v=$1; shift
    local flags=()
    [ "$v" = unfused ] && flags=(--attention unfused)
    [ "$v" != unfused ] && [ "$v" != default ] && flags=(--step-tiling "$v")
    echo "+ python -m webllm_py bench ${flags[*]} $*"
    timeout 200 python3 -m webllm_py bench "${flags[@]}" "$@" 2>"$OUT/err.txt" | sed "s/^{/{\"attention\": \"$v\", /" | tee -a "$OUT/bench.jsonl" | python3 -c "
import json, sys
for line in sys.stdin:
    try:
        r = json.loads(line)
    except ValueError:
        print(line.rstrip()); continue
    print(json.dumps({k: r.get(k) for k in ('attention', 'model', 'decode_tok_s', 'step_ms_per_token', 'gpu_ms_per_token', 'gpu_ms_by_op')}))"
    tail -2 "$OUT/err.txt"
}
for shape in llama-3.2-1b llama-3.1-8b; do
    for v in unfused default 128,32,32,32 256,32,32,32 512,64,32,64 default unfused; do
        variant $v --shape $shape --quant Q4_0 --decode-tokens 64
    done
    variant unfused --shape $shape --quant Q4_0 --decode-tokens 64 --profile
    variant default --shape $shape --quant Q4_0 --decode-tokens 64 --profile
done
