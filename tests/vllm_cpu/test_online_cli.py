# SPDX-License-Identifier: Apache-2.0
"""`lynx-bench online` end to end on vllm-cpu: two `vllm serve` processes, streamed requests at a
Poisson rate, router realism and expert counts over dev-mode /collective_rpc. A smoke test of the
tool; its timings are not performance numbers."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.vllm_cpu, pytest.mark.slow]
pytest.importorskip("vllm")


def test_lynx_bench_online_tiny(tmp_path):
    out = tmp_path / "online"
    proc = subprocess.run(
        [sys.executable, "-m", "lynx_ops.bench.cli", "online", "--shape", "qwen3-moe", "--tiny",
         "--rates", "4", "--duration", "4", "--input-len", "16", "--output-len", "8",
         "--tpot-target-ms", "1000", "--serve-arg=--kv-cache-memory-bytes=268435456",
         "--out", str(out)],
        capture_output=True, text=True, timeout=1200,
        env={**os.environ, "VLLM_LYNX_METRICS_INTERVAL": "1"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    with open(out / "online.csv") as f:
        rows = {r["mode"]: r for r in csv.DictReader(f)}
    assert set(rows) == {"stock", "lynx"}
    for row in rows.values():
        assert int(row["completed"]) == int(row["requests"]) > 0
        assert float(row["tpot_ms_median"]) > 0
    assert float(rows["lynx"]["experts_after"]) < float(rows["lynx"]["experts_before"])
    assert "serving throughput at the target" in proc.stdout
    # Prometheus /metrics: the Lynx families with the flag on (counted on the device in the engine
    # process, handed to the API server), none with it unset
    runs = json.loads((out / "online.json").read_text())["runs"]
    assert runs["stock"]["metrics"]["families"] == []
    m = runs["lynx"]["metrics"]
    assert {"lynx_decode_remaps_total", "lynx_experts_per_step_before",
            "lynx_experts_per_step_after", "lynx_moved_assignment_share"} <= set(m["families"])  # fmt: skip
    assert m["decode_remaps"] > 0
    assert m["experts_per_step_after"] < m["experts_per_step_before"]
    assert 0 < m["moved_assignment_share"] < 1
