#!/usr/bin/env bash
# The Kronos GPU issue's figures in one device call (each command capped; under 9 minutes in all).
# On the GPU machine, from the project root, after ../shared/gpu/README.md's install line:
#   bash .whl/install.sh .whl || exit 1; export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1; bash bench/gpu_checks.sh
# Every figure also goes to $OUT/gpu_checks.txt when $OUT is set; errors and progress bars to gpu_checks.err.
# Eager and compiled decoding steps (kronos.inference.compile_decoding) run side by side; fp32
# decoding is left out to fit the call (add `python bench/kronos_inference.py --device cuda`).
set -uo pipefail
log="${OUT:-/tmp}/gpu_checks.txt"
check() {
  local cap=$1; shift
  echo "\$ $*" | tee -a "$log"
  timeout "$cap" "$@" 2>>"${log%.txt}.err" | tee -a "$log"
  echo "exit status ${PIPESTATUS[0]}" | tee -a "$log"
}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$log"
check 60 python bench/kronos_inference.py --device cuda --bf16 --long-series 8 --short-series 300  # decoding, bf16 weights
check 180 python bench/kronos_inference.py --device cuda --bf16 --long-series 8 --short-series 300 --compile  # 4 shapes compile
check 90 python bench/kronos_signals.py --device cuda --series 92000 --batch-size 2048  # a CSI300 test year, target < 20 s
check 120 python bench/kronos_signals.py --device cuda --series 92000 --batch-size 2048 --compile
check 90 python bench/train_kronos.py --device cuda --predictor small --batch-size 256 --steps 50  # target >= 10,000 windows/s
