#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# On the GPU machine, after the devkit (../shared/devkit/README.md):
#   source .devkit/env.sh && LYNX_GIT_SHA=<sha> bash scripts/gpu_bench.sh [shape ...]
# Offline stock / Lynx / ceiling runs per shape (issue 4), results under $OUT/<shape>/.
set -uo pipefail
set -f  # LYNX_ENGINE_ARGS is word-split below and may hold JSON brackets: no globbing
OUT="${OUT:-/tmp/lynx-out}"; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 VLLM_USE_FLASHINFER_SAMPLER=0 VLLM_ENABLE_V1_MULTIPROCESSING=0
[ "${LYNX_SKIP_INSTALL:-0}" = 1 ] || python3 -m pip install -q --no-deps --no-build-isolation --no-index -e . 2>&1 | tail -2
SHAPES=("$@"); [ ${#SHAPES[@]} -gt 0 ] || SHAPES=(qwen3-moe mixtral qwen2-moe deepseek-v2-lite)
for shape in "${SHAPES[@]}"; do
  # Ceilings span the expert counts Lynx reaches; layers are the full depth where the bf16 weights
  # fit an 80 GB GPU (Mixtral-8x7B's 32 layers take 94 GB: half of them).
  case "$shape" in
    qwen3-moe) ceil="16 32 64"; layers=48 ;;          # E=128 k=8
    mixtral) ceil="2 4 6"; layers=16 ;;               # E=8 k=2
    qwen2-moe) ceil="8 16 32"; layers=24 ;;           # E=60 k=4
    deepseek-v2-lite) ceil="8 16 32"; layers=27 ;;    # E=64 k=6
    *) ceil=""; layers="" ;;
  esac
  layers="${LYNX_LAYERS:-$layers}"
  ceil="${LYNX_CEILING:-$ceil}"; [ "$ceil" = none ] && ceil=""
  # LYNX_ENGINE_ARGS: extra vLLM engine args (e.g. "quantization=fp8"); LYNX_BENCH_ARGS: extra
  # lynx-bench offline args (e.g. "--lora-adapters 4"); LYNX_BENCH_TAG names the run.
  extra=(); for kv in ${LYNX_ENGINE_ARGS:-}; do extra+=(--engine-arg "$kv"); done
  name="$shape${LYNX_BENCH_TAG:+_$LYNX_BENCH_TAG}"
  python3 -m lynx_ops.bench.cli offline --shape "$shape" ${layers:+--layers $layers} \
    --batches ${LYNX_BATCHES:-1 8 16 32 64} --input-len 128 --output-len ${LYNX_OUTPUT_LEN:-64} \
    --repeats ${LYNX_REPEATS:-3} ${ceil:+--ceiling $ceil} "${extra[@]}" ${LYNX_BENCH_ARGS:-} \
    --engine-arg gpu_memory_utilization=0.85 --out "$OUT/$name" 2>&1 | tee "$OUT/$name.log" | grep -v "repeat"
done
