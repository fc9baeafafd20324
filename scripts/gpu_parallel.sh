#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# On the two-GPU machine (`nvidia-h200-x2`), after the devkit: issue 6's parallel rows.
#   source .devkit/env.sh && LYNX_GIT_SHA=<sha> bash scripts/gpu_parallel.sh
# 1. tests/vllm_gpu/test_parallel.py: TP=2 flag-off identity and bitwise rank agreement (Qwen3-MoE,
#    Mixtral), EP=2 with and without EPLB (EPLB's recorded load = the ids Lynx returned).
# 2. Offline stock / Lynx / stock benchmarks (re-drawn gates) under TP=2 (Qwen3-MoE 48 layers,
#    Mixtral 32 layers: the full depth fits two GPUs) and EP=2 with and without EPLB (Qwen3-MoE).
# LYNX_PARALLEL_TESTS=0 / LYNX_PARALLEL_BENCH=0 skip a part. NVLink multicast stays off everywhere.
set -uo pipefail
OUT="${OUT:-/tmp/lynx-out}"; mkdir -p "$OUT"
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 PYTHONUNBUFFERED=1
[ "${LYNX_SKIP_INSTALL:-0}" = 1 ] || python3 -m pip install -q --no-deps --no-build-isolation --no-index -e . 2>&1 | tail -2
export LYNX_SKIP_INSTALL=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
if [ "${LYNX_PARALLEL_TESTS:-1}" = 1 ]; then
  python3 -m pytest tests/vllm_gpu/test_parallel.py -m vllm_gpu -q -p no:cacheprovider -o addopts="" -rfEs \
    2>&1 | tee "$OUT/parallel_tests.log" | tail -15
fi
if [ "${LYNX_PARALLEL_BENCH:-1}" = 1 ]; then
  export LYNX_CEILING=none LYNX_BATCHES="${LYNX_BATCHES:-1 16 32 64}"
  LYNX_BENCH_TAG=tp2 LYNX_ENGINE_ARGS="tensor_parallel_size=2" bash scripts/gpu_bench.sh qwen3-moe
  LYNX_BENCH_TAG=tp2 LYNX_LAYERS=32 LYNX_ENGINE_ARGS="tensor_parallel_size=2" bash scripts/gpu_bench.sh mixtral
  LYNX_BENCH_TAG=ep2 LYNX_ENGINE_ARGS="tensor_parallel_size=2 enable_expert_parallel=true" \
    bash scripts/gpu_bench.sh qwen3-moe
  LYNX_BENCH_TAG=ep2_eplb \
    LYNX_ENGINE_ARGS='tensor_parallel_size=2 enable_expert_parallel=true enable_eplb=true eplb_config={"window_size":1000,"step_interval":3000}' \
    bash scripts/gpu_bench.sh qwen3-moe
fi
