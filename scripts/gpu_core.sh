#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# On the GPU machine (no vLLM needed): CUDA test tiers of the core op, then the kernel latency table.
# Usage there: LYNX_GIT_SHA=<sha> bash scripts/gpu_core.sh   (logs and CSV under $OUT)
# LYNX_CORE_LATENCY=0 skips the latency table (when other work shares the GPU, timings mean nothing).
set -uo pipefail
OUT="${OUT:-/tmp/lynx-out}"; mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
# Triton compiles (CPU-bound) dominate this tier: one worker took over 8 minutes for 40% of it on an
# H100 machine, so spread it over 8 xdist workers where pytest-xdist is installed (it is there).
XDIST=""; python3 -c "import xdist" 2>/dev/null && XDIST="-n 8"
python3 -m pytest tests -m cuda --ignore=tests/vllm_cpu --ignore=tests/vllm_gpu $XDIST -q \
  -p no:cacheprovider -o addopts="" -rfEs 2>&1 | tee "$OUT/cuda_tests.log" | tail -25
echo "cuda tests exit: ${PIPESTATUS[0]}"
if [ "${LYNX_CORE_LATENCY:-1}" = 1 ]; then
  python3 perf/bench_kernel.py --out "$OUT/kernel_latency.csv" 2>&1 | tee "$OUT/bench_kernel.log" | tail -14
fi
if [ "${LYNX_SWEEP:-0}" = 1 ]; then
  python3 perf/bench_kernel.py --sweep --repeats 20 ${LYNX_SWEEP_SHAPES:+--shapes $LYNX_SWEEP_SHAPES} \
    --out "$OUT/kernel_sweep.csv" 2>&1 | tee "$OUT/bench_sweep.log" | tail -50
fi
