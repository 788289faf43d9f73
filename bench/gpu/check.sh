#!/usr/bin/env bash
# The GPU check in one call, on a lent GPU machine as it is (README, "GPU check"): wheels
# carried in bench/gpu/carry/wheels are installed beside the checkout (nothing is fetched),
# then bench_gpu_refine.py runs inside a time budget and writes its JSON, phase by phase, to
# $OUT (what the run tool brings back), with its log beside it. Extra arguments go to
# bench_gpu_refine.py (--device cpu --shape tiny ... runs it on a CPU).
set -euo pipefail
cd "$(dirname "$0")/../.."
carry=bench/gpu/carry
out=${OUT:-bench/results}
mkdir -p "$out"
if compgen -G "$carry/wheels/*.whl" > /dev/null; then
    python -m pip install --quiet --no-index --no-deps --target "$carry/site" "$carry"/wheels/*.whl
    export PYTHONPATH="$PWD/$carry/site:${PYTHONPATH:-}"
fi
export PYTHONPATH="$PWD:${PYTHONPATH:-}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1  # no network there: nothing may wait for one
nvidia-smi --query-gpu=name,memory.used,memory.total,utilization.gpu --format=csv > "$out/nvidia-smi.csv" 2>&1 || true
python bench/bench_gpu_refine.py --tokenizer "$carry/llama2" --json "$out/gpu_check.json" \
    --time-budget "${BUDGET:-420}" --raw-tokens 20e6 --train-steps 150 "$@" 2>&1 | tee "$out/gpu_check.log"
