#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# One GPU session as background jobs, so that device time is spent on work rather than on call limits
# (a call runs at most 10 minutes, a machine stays warm while calls follow each other within 30 s).
#
#   early  (with the first devkit chunk): copy the tree to /tmp/lynx-repo; start the embedded-model
#          training (LYNX_TRAIN_MINUTES=0: none) and the op's CUDA tier (LYNX_CUDA_TIER=0: none);
#          neither needs vLLM, they share the GPU, neither is timed.
#   chain  (with the last chunk, after `source .devkit/env.sh`): scripts/gpu_chain.sh in the tree
#          copy, in the background: install lynx-ops; in parallel the vllm_gpu tier per family, the
#          serving quickstart and the main job; then, once the GPU is quiet, the timed benchmarks
#          (its header lists the switches).
#   collect [SECONDS]: wait up to SECONDS for the chain, then pack what exists into $OUT
#          (results.tgz, plus the trained model in 15 MB parts: a call returns files up to 16 MiB).
set -uo pipefail
cmd="${1:?early | chain | collect [seconds]}"
REPO=/tmp/lynx-repo RES=/tmp/lynx-res
mkdir -p "$RES"
export PYTHONUNBUFFERED=1

case "$cmd" in
early)
  rm -rf "$REPO" && mkdir -p "$REPO" && cp -a . "$REPO/" && rm -rf "$REPO/.devkit"
  cd "$REPO" || exit 1
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader > "$RES/gpu.txt"
  if [ "${LYNX_TRAIN_MINUTES:-3}" != 0 ]; then
    setsid nohup python3 scripts/train_embedded_model.py --minutes "${LYNX_TRAIN_MINUTES:-3}" \
      --out /tmp/emb > "$RES/train.log" 2>&1 < /dev/null &
    echo $! > "$RES/train.pid"
  fi
  if [ "${LYNX_CUDA_TIER:-1}" = 1 ]; then
    setsid nohup env LYNX_CORE_LATENCY=0 OUT="$RES/core" bash scripts/gpu_core.sh \
      > "$RES/core.log" 2>&1 < /dev/null &
    echo $! > "$RES/core.pid"
  fi
  echo "early: started $(cd "$RES" && ls ./*.pid 2>/dev/null | tr '\n' ' ')"
  ;;
chain)
  cd "$REPO" || exit 1
  export PYTHONPATH="/tmp/lynx-site:$REPO"
  RES="$RES" setsid nohup bash scripts/gpu_chain.sh > "$RES/chain.log" 2>&1 < /dev/null &
  echo $! > "$RES/chain.pid"
  echo "chain started (pid $!)"
  ;;
collect)
  deadline=$(( $(date +%s) + ${2:-0} ))
  while [ "$(date +%s)" -lt "$deadline" ]; do
    grep -q " done$" "$RES/chain.steps" 2>/dev/null && break
    sleep 5
  done
  OUT="${OUT:?}"
  cat "$RES/chain.steps" 2>/dev/null
  tail -3 "$RES/train.log" 2>/dev/null
  grep -h "passed\|failed\|exit:" "$RES/core/cuda_tests.log" "$RES/core.log" 2>/dev/null | tail -3
  tail -12 "$RES/plugin.log" 2>/dev/null
  tail -6 "$RES/parallel/parallel_tests.log" 2>/dev/null
  # Everything but the model weights and vLLM's temporary model directories, in one file.
  for t in "$RES"/bench/*.log; do [ -f "$t" ] && { echo "== $t"; grep -A12 "^router:" "$t" | head -14; }; done
  # Logs and tables only: no weights (dummy model dirs, LoRA adapters), one small file.
  tar czf "$OUT/results.tgz" -C "$RES" --exclude='model' --exclude='lora' --exclude='lynx-lora-*' \
    --exclude='*.safetensors' --exclude='*.pid' . 2>/dev/null
  if [ -f /tmp/emb/training.json ] && ! kill -0 "$(cat "$RES/train.pid" 2>/dev/null)" 2>/dev/null; then
    tar cf - -C /tmp emb | split -b 15000000 - "$OUT/emb.tar.part_"
  fi
  ls -la "$OUT"
  ;;
esac
