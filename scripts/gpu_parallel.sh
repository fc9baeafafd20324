#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# On the two-GPU machine (`nvidia-h200-x2`), after the devkit: issue 6's parallel rows.
#   source .devkit/env.sh && LYNX_GIT_SHA=<sha> bash scripts/gpu_parallel.sh
# 1. tests/vllm_gpu/test_parallel.py: TP=2 flag-off identity and bitwise rank agreement (Qwen3-MoE,
#    Mixtral), EP=2 with and without EPLB (EPLB's recorded load = the ids Lynx returned).
# 2. Offline stock / Lynx / stock benchmarks (re-drawn gates) under TP=2 (Qwen3-MoE, Mixtral) and
#    EP=2 with and without EPLB (Qwen3-MoE).
# LYNX_PARALLEL_TESTS=0 / LYNX_PARALLEL_BENCH=0 skip a part. NVLink multicast stays off everywhere.
set -uo pipefail
OUT="${OUT:-/tmp/lynx-out}"; mkdir -p "$OUT"
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONUNBUFFERED=1
[ "${LYNX_SKIP_INSTALL:-0}" = 1 ] || python3 -m pip install -q --no-deps --no-build-isolation --no-index -e . 2>&1 | tail -2
export LYNX_SKIP_INSTALL=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
if [ "${LYNX_PARALLEL_TESTS:-1}" = 1 ]; then
  # Four engines at once when pytest-xdist is there: each takes 15% of a GPU and a fixed KV cache.
  # If xdist cannot start (usage or internal error: 4, 3), the same tests run one after another.
  ptest() { python3 -m pytest tests/vllm_gpu/test_parallel.py -m vllm_gpu -q -p no:cacheprovider \
              -o addopts="" -rfEs "$@" > "$OUT/parallel_tests.log" 2>&1; }
  ptest -n 4; rc=$?
  if [ "$rc" = 4 ] || [ "$rc" = 3 ]; then mv "$OUT/parallel_tests.log" "$OUT/parallel_tests_xdist.log"; ptest; rc=$?; fi
  tail -15 "$OUT/parallel_tests.log"; echo "parallel tests exit: $rc"
fi
if [ "${LYNX_PARALLEL_BENCH:-1}" = 1 ]; then
  # Layers as in the one-GPU runs, so TP=2 compares with them: Qwen3-MoE 48 (the headline), Mixtral
  # 16; the EP runs at 16 layers to fit the session. EPLB rearranges every 300 steps (window 100):
  # several times in a run, so its balancing of Lynx's concentrated load is part of the number.
  export LYNX_CEILING=none LYNX_BATCHES="${LYNX_BATCHES:-1 16 32 64}"
  LYNX_BENCH_TAG=tp2 LYNX_ENGINE_ARGS="tensor_parallel_size=2" bash scripts/gpu_bench.sh qwen3-moe
  LYNX_BENCH_TAG=ep2 LYNX_LAYERS=16 LYNX_ENGINE_ARGS="tensor_parallel_size=2 enable_expert_parallel=true" \
    bash scripts/gpu_bench.sh qwen3-moe
  LYNX_BENCH_TAG=ep2_eplb LYNX_LAYERS=16 \
    LYNX_ENGINE_ARGS='tensor_parallel_size=2 enable_expert_parallel=true enable_eplb=true eplb_config={"window_size":100,"step_interval":300}' \
    bash scripts/gpu_bench.sh qwen3-moe
  LYNX_BENCH_TAG=tp2 LYNX_LAYERS=16 LYNX_ENGINE_ARGS="tensor_parallel_size=2" bash scripts/gpu_bench.sh mixtral
fi
