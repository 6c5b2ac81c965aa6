#!/bin/bash
# Benchmarks on the device machine (an H100 through native wgpu over Vulkan). Run from the repo root
# with `.gl` (Vulkan loader debs) and `.whl` (wgpu 0.32 + deps, cp312) carried; JSON lines go to
# $OUT/bench.jsonl (or ./bench.jsonl), one per run, and are copied into docs/benchmarks.md by hand.
#   scripts/device_bench.sh [full|kernels|profile|dev|structured|matvec|matvec-tune|matvec-ops|latency-1b|subgroups|q8|none]   (kernels: scripts/kernel_bench.py; dev: that + profiles;
#   structured: decode with/without a JSON token mask, needs build/tokenizers/{smollm2,llama3} carried;
#   attention: attention_step checked against numpy, its kernel timings, decode with it and without it; none: setup only)
set -u
OUT=${OUT:-.}
for f in .gl/*.deb; do dpkg -x "$f" /; done; ldconfig
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
# NVIDIA's GLX Vulkan ICD fails headless ("Could not get vkCreateInstance"); its EGL library works.
printf '{"file_format_version":"1.0.1","ICD":{"library_path":"/usr/local/nvidia/lib64/libEGL_nvidia.so.0","api_version":"1.4.312"}}' > /tmp/icd.json
export VK_DRIVER_FILES=/tmp/icd.json LD_LIBRARY_PATH=/usr/local/nvidia/lib64:${LD_LIBRARY_PATH:-}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
date -u +%FT%TZ

bench() { echo "+ python -m webllm_py bench $*"; timeout 300 python3 -m webllm_py bench "$@" 2>"$OUT/err.txt" | tee -a "$OUT/bench.jsonl"; tail -3 "$OUT/err.txt"; }
# the headline fields of bench's JSON lines (other lines pass through)
show() { python3 -c 'import json,sys
for l in sys.stdin:
    if l.startswith("{"):
        r = json.loads(l); print({k: r[k] for k in ("decode_tok_s", "step_ms_per_token", "gpu_ms_per_token", "gpu_ms_by_op") if k in r})
    else:
        print(l.rstrip())'; }
mode=${1:-full}
if [ "$mode" = kernels ] || [ "$mode" = dev ]; then
    echo "+ python scripts/kernel_bench.py"
    timeout 240 python3 scripts/kernel_bench.py 2>"$OUT/kernel_err.txt" | tee "$OUT/kernels.jsonl"; tail -3 "$OUT/kernel_err.txt"
fi
if [ "$mode" = profile ]; then  # in-model: with and without subgroups
    bench --shape llama-3.1-8b --quant Q4_0 --decode-tokens 64 --profile --subgroups
    bench --shape llama-3.2-1b --quant Q4_0 --decode-tokens 64 --profile --subgroups
    bench --shape llama-3.1-8b --quant Q4_0 --decode-tokens 64
    bench --shape llama-3.2-1b --quant Q4_0 --decode-tokens 64
fi
if [ "$mode" = dev ]; then  # the profile runs used while tuning
    bench --shape llama-3.1-8b --quant Q4_0 --decode-tokens 64 --profile --subgroups
    bench --shape llama-3.2-1b --quant Q4_0 --decode-tokens 64 --profile --subgroups
fi
if [ "$mode" = structured ]; then  # issue 9: decode slowdown under response_format (real tokenizers, random weights)
    for c in json_object schema; do
        bench --shape smollm2-135m --quant Q4_1 --embed-quant Q8_0 --constraint $c
        bench --shape smollm2-135m --quant Q4_1 --embed-quant Q8_0 --constraint $c --temperature 1
    done
    for c in json_object schema; do
        bench --shape llama-3.2-1b --quant Q4_0 --constraint $c --tokenizer build/tokenizers/llama3 --temperature 1
    done
    bench --shape llama-3.1-8b --quant Q4_0 --constraint schema --tokenizer build/tokenizers/llama3 --temperature 1
fi
if [ "$mode" = matvec ]; then  # issue 7: the staged matvec (matvec_q4s) against matvec_q4 (--matvec-kernel q4), each pair twice in swapped order
    for q in Q4_0 Q4_K; do
        for s in llama-3.1-8b llama-3.2-1b; do
            bench --matvec-kernel q4 --shape $s --quant $q --decode-tokens 64 --profile
            bench --shape $s --quant $q --decode-tokens 64 --profile
            bench --shape $s --quant $q --decode-tokens 64
            bench --matvec-kernel q4 --shape $s --quant $q --decode-tokens 64
        done
    done
    for s in llama-3.1-8b llama-3.2-1b; do  # two other tilings of the staged kernel
        for t in 128,8,1 256,4,1,1; do echo "--staged-tiling $t"; bench --staged-tiling "$t" --shape $s --quant Q4_0 --decode-tokens 64 >/dev/null; done
    done
    echo "+ python scripts/kernel_bench.py --only=staged_check,staged"
    timeout 150 python3 scripts/kernel_bench.py --only=staged_check,staged 2>"$OUT/kernel_err.txt" > "$OUT/kernels.jsonl"; tail -3 "$OUT/kernel_err.txt"
fi
if [ "$mode" = matvec-tune ]; then  # the staged matvec on this GPU: correctness vs numpy/matvec_q4, tilings alone and in the model
    echo "+ python scripts/kernel_bench.py --only=staged_check,staged"
    timeout 200 python3 scripts/kernel_bench.py --only=staged_check,staged 2>"$OUT/kernel_err.txt" | tee "$OUT/kernels.jsonl" | grep -v '"kind": "staged' ; grep staged_check "$OUT/kernels.jsonl"; tail -3 "$OUT/kernel_err.txt"
    for s in llama-3.1-8b llama-3.2-1b; do
        for t in 256,16,1 256,8,1 256,8,2 256,16,1,1 256,8,1,1 256,8,2,1; do
            echo "--staged-tiling $t"; bench --staged-tiling "$t" --shape $s --quant Q4_0 --decode-tokens 64 >/dev/null
        done
    done
fi
if [ "$mode" = matvec-ops ]; then  # the staged kernel's tiling per op kind, in the model (--profile): --staged-tiling "ALL[;glu=..][;wide=..]"
    for s in llama-3.1-8b llama-3.2-1b; do
        for t in "" "256,8,1;glu=256,8,2" "256,8,1;glu=128,8,1" "256,8,1;wide=256,16,1" "128,8,1" ""; do
            echo "--staged-tiling $t"; bench --staged-tiling "$t" --shape $s --quant Q4_0 --decode-tokens 64 --profile >/dev/null
        done
    done
fi
if [ "$mode" = latency-1b ]; then  # issue 7, 1B decode latency in-model (--profile): staged tilings per op (--staged-tiling keys
    # k<K>=, tall=, glu=, wide=) and attention_step tilings (--step-tiling wg,chunk,splits,min_split), the defaults before
    # and after twice; then 8B with and without the prefetching down (wide=256,8,1: before)
    for ts in "k8192=256,8,1|" "|" "tall=256,8,2|" "tall=256,8,4|" "k2048=64,8,1;glu=256,8,1|" "|128,64,32,64" \
              "|256,64,32,64" "|128,32,16,32" "|128,32,32,64" "k8192=256,8,1|" "|"; do
        t=${ts%|*}; a=${ts#*|}
        echo "--staged-tiling $t --step-tiling $a"; bench --step-tiling "$a" --staged-tiling "$t" --shape llama-3.2-1b --quant Q4_0 --decode-tokens 64 --profile | show
    done
    for t in wide=256,8,1 "" wide=256,8,1 ""; do
        echo "--staged-tiling $t"; bench --staged-tiling "$t" --shape llama-3.1-8b --quant Q4_0 --decode-tokens 64 | show
    done
fi
if [ "$mode" = subgroups ]; then  # issue 7: matvec_q4s's team reduction by subgroupShuffleXor vs workgroup memory + barrier
    echo "+ python scripts/kernel_bench.py --only=staged_sg"
    [ -n "${SKIP_KERNELS:-}" ] || timeout 120 python3 scripts/kernel_bench.py --only=staged_sg 2>"$OUT/kernel_err.txt" | grep -v '"kind": "floor\|record_host'; tail -3 "$OUT/kernel_err.txt"
    for s in "" --subgroups "" --subgroups "" --subgroups; do
        echo "1B $s"; bench --shape llama-3.2-1b --quant Q4_0 --decode-tokens 64 --profile $s | show
    done
    for s in "" --subgroups "" --subgroups; do
        echo "8B $s"; bench --shape llama-3.1-8b --quant Q4_0 --decode-tokens 64 $s | show
    done
fi
if [ "$mode" = q8 ]; then  # issue 7: Q8_0 and Q6_K weights in the staged kernel (matvec_q4s) vs the generic matvec (--matvec-kernel q4), same process/call
    echo "+ python scripts/kernel_bench.py --only=staged_q8"
    timeout 150 python3 scripts/kernel_bench.py --only=staged_q8 2>"$OUT/kernel_err.txt" | grep staged_q8 | tee "$OUT/kernels.jsonl"; tail -3 "$OUT/kernel_err.txt"
    for q in ${Q8_QUANTS:-Q8_0 Q6_K}; do
        for m in ${Q8_MODES:-q4 staged staged q4}; do
            echo "1B $q --matvec-kernel $m"; bench --matvec-kernel $m --shape llama-3.2-1b --quant $q --decode-tokens 64 --profile | show
        done
    done
fi
if [ "$mode" = full ]; then
    bench --shape smollm2-135m --quant Q4_1 --embed-quant Q8_0
    bench --shape llama-3.2-1b --quant Q4_0 --hf-reference
    bench --shape llama-3.2-1b --quant Q4_K
    bench --shape llama-3.1-8b --quant Q4_0 --hf-reference
    bench --shape llama-3.1-8b --quant Q4_K
fi
