#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# On the GPU machine, after the devkit chunks are unpacked (../shared/devkit/README.md):
#   source .devkit/env.sh && LYNX_GPU_FAMILIES=qwen3-moe,mixtral bash scripts/gpu_plugin.sh
# Installs lynx-ops offline (so vLLM finds the entry point), runs the vllm_gpu tier, keeps logs.
set -uo pipefail
OUT="${OUT:-/tmp/lynx-out}"; mkdir -p "$OUT"
export LYNX_RESULTS_DIR="$OUT" PYTHONUNBUFFERED=1 VLLM_USE_FLASHINFER_SAMPLER=0
[ "${LYNX_SKIP_INSTALL:-0}" = 1 ] || python3 -m pip install -q --no-deps --no-build-isolation --no-index -e . 2>&1 | tail -2
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -m pytest tests/vllm_gpu -m vllm_gpu -q -p no:cacheprovider -o addopts="" -rfEs \
  2>&1 | tee "$OUT/vllm_gpu.log" | tail -30
echo "vllm_gpu exit: ${PIPESTATUS[0]}"
python3 - <<'PY'
import json, os
path = os.path.join(os.environ["OUT"], "vllm_gpu_families.jsonl")
if os.path.exists(path):
    print(f"{'family':20s} {'calls':>6s} {'host':>5s} {'experts before->after (mean over layers)':>42s} off==stock")
    for line in open(path):
        r = json.loads(line)
        b = sum(r["before"].values()) / max(len(r["before"]), 1)
        a = sum(r["after"].values()) / max(len(r["after"]), 1)
        print(f"{r['family']:20s} {r['device_calls']:6d} {r['host_decisions']:5d} {b:20.1f} -> {a:<19.1f} {r.get('off_identical_to_stock', '-')}")
PY
