# SPDX-License-Identifier: Apache-2.0
"""The plugin's stats thread reads Lynx's device counters while vLLM captures CUDA graphs on the
main thread. Through SideReader (relaxed capture mode, its own stream) the reads go through and
the capture stays valid; a plain `.cpu()` from the thread breaks the capture, the failure that
killed a 48-layer engine with speculative decoding at startup. Each case runs in a fresh process
(tests/capture_read_probe.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import HAS_CUDA

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not HAS_CUDA, reason="needs a GPU")]
ROOT = Path(__file__).resolve().parents[1]


def _probe(how: str) -> dict:
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    env.pop("TRITON_INTERPRET", None)
    proc = subprocess.run([sys.executable, "-m", "tests.capture_read_probe", how], cwd=ROOT,
                          capture_output=True, text=True, env=env, timeout=300)  # fmt: skip
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    assert lines, f"probe {how} printed no result\n{(proc.stdout + proc.stderr)[-4000:]}"
    return json.loads(lines[-1])


def test_side_reader_reads_during_capture_and_capture_stays_valid():
    got = _probe("side")
    assert got["thread_error"] is None and got["capture_error"] is None, got
    assert got["reads_during_capture"] >= 5, got
    assert got["calls_after_replays"] == 3, got  # the captured stats update runs on each replay


def test_plain_read_during_capture_breaks_it():
    """The control: without SideReader the same reads fail or invalidate the capture."""
    got = _probe("plain")
    assert got["thread_error"] is not None or got["capture_error"] is not None, got
