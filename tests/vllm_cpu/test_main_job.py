# SPDX-License-Identifier: Apache-2.0
"""The README's main job, `python -m lynx_ops.demo`, on the embedded trained model in vllm-cpu.

The embedded model's router was trained (load-balancing loss), so its decode batches spread over
most of its 32 experts; with Lynx on, the same prompts must touch fewer of them. Both engines run
the same greedy prompts; the counts come from the per-layer counters of the Lynx engine.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from lynx_ops import embedded
from lynx_ops.registry import router_shape

pytestmark = [pytest.mark.vllm_cpu, pytest.mark.slow]
pytest.importorskip("vllm")
ROOT = Path(__file__).resolve().parents[2]


def test_embedded_model_is_shipped_with_its_training_record():
    assert embedded.available()
    config = json.loads((embedded.MODEL_DIR / "config.json").read_text())
    # transformers 5 writes the expert count as num_local_experts; the registry reads either
    assert config["model_type"] == "qwen3_moe" and router_shape(config) == (32, 4)
    record = json.loads((embedded.MODEL_DIR / "training.json").read_text())
    assert record["steps"] > 0 and record["device"]  # how it was made travels with it


def test_main_job_compares_stock_and_lynx_on_the_embedded_model():
    proc = subprocess.run([sys.executable, "-m", "lynx_ops.demo", "--batch", "16", "--tokens", "24"],
                          capture_output=True, text=True, cwd=ROOT, timeout=1200)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    assert "router: trained" in out  # says how the router was made
    assert "16 held-out windows (16 documents)" in out  # independent documents
    row = r"distinct experts per MoE layer \(decode\)\s+([\d.]+)\s+([\d.]+)"
    before, after = map(float, re.search(row, out).groups())
    # A decode step of 16 rows x top-4 over 32 experts: stock touches more than one row's 4 experts
    # and at most all 32; Lynx must touch fewer.
    assert 4 < before <= 32
    assert after < before
    nll = re.search(r"decode NLL per token \(teacher-forced\)\s+([\d.]+)\s+([\d.]+)", out)
    stock_nll, lynx_nll = map(float, nll.groups())
    assert 0 < stock_nll < 10 and abs(lynx_nll - stock_nll) < 0.2 * stock_nll  # measured, sane
    assert "rows keeping their top-1 expert" in out and "tokens/s is not the point" in out
