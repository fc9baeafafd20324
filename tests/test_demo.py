# SPDX-License-Identifier: Apache-2.0
"""The README's main job runs and checks the kernel against the reference (op demo path)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_op_demo_runs_and_matches_reference():
    proc = subprocess.run([sys.executable, "-m", "lynx_ops.demo", "--op", "--batch", "8"],
                          capture_output=True, text=True, cwd=ROOT, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "kernel == reference: ids identical" in proc.stdout
    assert "synthetic router" in proc.stdout  # says how the router was made
