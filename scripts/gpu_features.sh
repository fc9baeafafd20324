#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# On the GPU machine (after the devkit; started by gpu_chain.sh when LYNX_FEATURES is set):
# one offline stock / Lynx / stock benchmark per vLLM feature of issue 6, on the Qwen3-30B-A3B
# shape with dummy weights and gates re-drawn (spread 2, skew 1). Results under $OUT/bench/.
#   fp8      MoE-only online FP8 (the gate stays bf16, so the re-draw can act), all 48 layers
#   lora     4 random-weight expert LoRA adapters of rank 16, requests round-robin, 16 layers
#   offload  10 GiB of expert weights in pinned host memory (UVA), 16 layers
#   ngram    n-gram speculative decoding, 4 draft tokens, 16 layers (LYNX_NGRAM_LAYERS); with stats
#            on, so that the bench reads the acceptance and reports the time per verification step
# LYNX_FEATURES picks and orders them (default: lora ngram fp8 offload).
set -uo pipefail
OUT="${OUT:-/tmp/lynx-out}"; mkdir -p "$OUT"
export LYNX_CEILING=none LYNX_BATCHES="${LYNX_BATCHES:-1 16 32 64}"
for feature in ${LYNX_FEATURES:-lora ngram fp8 offload}; do
  echo "$(date -u +%T) feature $feature"
  case "$feature" in
    fp8) LYNX_LAYERS=48 LYNX_BENCH_TAG=fp8moe \
           LYNX_ENGINE_ARGS='quantization=online quantization_config={"moe":"fp8_per_channel"}' \
           bash scripts/gpu_bench.sh qwen3-moe ;;
    lora) LYNX_LAYERS=16 LYNX_BENCH_TAG=lora4 LYNX_BENCH_ARGS="--lora-adapters 4 --lora-rank 16" \
           bash scripts/gpu_bench.sh qwen3-moe ;;
    offload) LYNX_LAYERS=16 LYNX_BENCH_TAG=offload10 LYNX_OUTPUT_LEN=32 \
           LYNX_ENGINE_ARGS='cpu_offload_gb=10 cpu_offload_params=["experts"]' \
           bash scripts/gpu_bench.sh qwen3-moe ;;
    ngram) LYNX_LAYERS="${LYNX_NGRAM_LAYERS:-16}" LYNX_BENCH_TAG=ngram4 \
           LYNX_ENGINE_ARGS='speculative_config={"method":"ngram","num_speculative_tokens":4,"prompt_lookup_max":4,"prompt_lookup_min":2} disable_log_stats=false' \
           bash scripts/gpu_bench.sh qwen3-moe ;;
    *) echo "unknown feature $feature (fp8 lora offload ngram)"; exit 2 ;;
  esac
done
