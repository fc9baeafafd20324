#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# The GPU session's chain, started in the background by `gpu_session.sh chain` (in the tree copy,
# after `source .devkit/env.sh`); RES is where results go, chain.steps logs each step's start.
#
# Phase A, correctness only, in parallel, LYNX_PHASE_A_JOBS at a time (nothing in it is timed):
#   - the vllm_gpu tier, one pytest process per family in LYNX_GPU_FAMILIES (LYNX_PLUGIN_TIER=0:
#     none), each with a fixed KV cache: that skips vLLM's memory profiling, which fails when
#     another process on the GPU frees memory meanwhile;
#   - the README's serving quickstart (LYNX_QUICKSTART=0: not);
#   - the main job, `python -m lynx_ops.demo` (LYNX_DEMO=0: not).
# Then it waits for the early jobs (training, the op's CUDA tier).
# Phase B, timed, one at a time on a quiet GPU: the kernel latency table (LYNX_LATENCY=0: not),
# the fused-MoE config question per shape in LYNX_MOE_CONFIG_SHAPES (a few minutes), then the
# offline benchmarks per shape in LYNX_BENCH_SHAPES (with the kernel sweep after qwen3-moe unless
# LYNX_SWEEP=0; gpu_bench.sh's LYNX_* switches pass through), then the feature benchmarks of
# scripts/gpu_features.sh when LYNX_FEATURES is set. LYNX_FEATURE_TESTS=1 adds
# tests/vllm_gpu/test_features.py (LoRA ids) to phase A. LYNX_PARALLEL=1 (two GPUs) adds the
# parallel tests of scripts/gpu_parallel.sh to phase A and its TP/EP benchmarks to the end of phase B.
set -uo pipefail
RES="${RES:?}"
waitpid() { while kill -0 "$(cat "$1")" 2>/dev/null; do sleep 5; done; }
step() { echo "$(date -u +%T) $*" >> "$RES/chain.steps"; }

step install
python3 -m pip install -q --no-deps --no-build-isolation --no-index -e . > "$RES/install.log" 2>&1
export LYNX_SKIP_INSTALL=1  # once, here: parallel pip runs on one tree would race

phase_a=()
# At most LYNX_PHASE_A_JOBS engines at once (default 3): nine at once on one 80 GB GPU ran four of
# them out of memory (perf/results/vllm_gpu_h100_f43f01f/*_first_try_oom.log).
slot() { while [ "$(jobs -rp | wc -l)" -ge "${LYNX_PHASE_A_JOBS:-3}" ]; do sleep 2; done; }
if [ "${LYNX_PLUGIN_TIER:-1}" = 1 ]; then
  fams="${LYNX_GPU_FAMILIES:-qwen2-moe,qwen3-moe,mixtral,deepseek-v2-lite,deepseek-v3-style,gpt-oss,llama4-scout}"
  for fam in ${fams//,/ }; do
    slot
    step "plugin $fam"
    LYNX_GPU_FAMILIES="$fam" LYNX_GPU_MEM=0.05 LYNX_GPU_KV_MIB=1024 OUT="$RES/plugin_$fam" \
      bash scripts/gpu_plugin.sh > "$RES/plugin_$fam.log" 2>&1 &
    phase_a+=($!)
  done
fi
if [ "${LYNX_QUICKSTART:-1}" = 1 ]; then
  slot
  step quickstart
  OUT="$RES" bash scripts/gpu_quickstart.sh > "$RES/quickstart.log" 2>&1 &
  phase_a+=($!)
fi
if [ "${LYNX_FEATURE_TESTS:-0}" = 1 ]; then
  slot
  step "feature tests"
  LYNX_GPU_MEM=0.05 LYNX_GPU_KV_MIB=1024 python3 -m pytest tests/vllm_gpu/test_features.py -m vllm_gpu \
    -q -p no:cacheprovider -o addopts="" -rfEs > "$RES/feature_tests.log" 2>&1 &
  phase_a+=($!)
fi
if [ "${LYNX_PARALLEL:-0}" = 1 ]; then
  slot
  step "parallel tests"
  LYNX_PARALLEL_BENCH=0 OUT="$RES/parallel" bash scripts/gpu_parallel.sh > "$RES/parallel.log" 2>&1 &
  phase_a+=($!)
fi
if [ "${LYNX_DEMO:-1}" = 1 ]; then
  slot
  step demo
  python3 -m lynx_ops.demo --gpu-memory-utilization 0.05 > "$RES/demo.log" 2>&1 &
  phase_a+=($!)
fi
for p in "${phase_a[@]}"; do wait "$p"; done
step wait-training-and-tests
for f in "$RES/train.pid" "$RES/core.pid"; do [ -f "$f" ] && waitpid "$f"; done

if [ "${LYNX_LATENCY:-1}" = 1 ]; then
  step latency
  python3 perf/bench_kernel.py --out "$RES/kernel_latency.csv" > "$RES/bench_kernel.log" 2>&1
fi
for shape in ${LYNX_MOE_CONFIG_SHAPES:-}; do
  step "moe-config $shape"
  python3 perf/bench_moe_config.py --shape "$shape" --out "$RES/moe_config_$shape.csv" \
    > "$RES/moe_config_$shape.log" 2>&1
done
for shape in ${LYNX_BENCH_SHAPES-qwen3-moe}; do  # set but empty: none
  step "bench $shape"
  OUT="$RES/bench" bash scripts/gpu_bench.sh "$shape" > "$RES/bench_$shape.log" 2>&1
  if [ "$shape" = qwen3-moe ] && [ "${LYNX_SWEEP:-1}" = 1 ]; then
    step "sweep qwen3"
    python3 perf/bench_kernel.py --sweep --repeats 20 --shapes qwen3 \
      --out "$RES/kernel_sweep.csv" > "$RES/bench_sweep.log" 2>&1
  fi
done
if [ -n "${LYNX_FEATURES:-}" ]; then
  step "features $LYNX_FEATURES"
  OUT="$RES/bench" bash scripts/gpu_features.sh > "$RES/features.log" 2>&1
fi
if [ "${LYNX_PARALLEL:-0}" = 1 ]; then
  step "parallel bench"
  LYNX_PARALLEL_TESTS=0 OUT="$RES/bench" bash scripts/gpu_parallel.sh > "$RES/parallel_bench.log" 2>&1
fi
step done
