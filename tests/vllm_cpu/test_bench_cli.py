# SPDX-License-Identifier: Apache-2.0
"""`lynx-bench offline` end to end on vllm-cpu with a tiny model: wiring, outputs, provenance.

A smoke test of the tool (two engines, one batch size); its timings are not performance numbers.
"""

from __future__ import annotations

import csv
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.vllm_cpu, pytest.mark.slow]
pytest.importorskip("vllm")


def test_lynx_bench_offline_tiny(tmp_path):
    out = tmp_path / "bench"
    proc = subprocess.run(
        [sys.executable, "-m", "lynx_ops.bench.cli", "offline", "--shape", "mixtral", "--tiny",
         "--batches", "8", "--input-len", "8", "--output-len", "4", "--repeats", "1",
         "--engine-arg", "kv_cache_memory_bytes=268435456", "--out", str(out)],
        capture_output=True, text=True, timeout=900,
        env={**__import__("os").environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "0"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "[stock] B=8" in proc.stdout and "[lynx] B=8" in proc.stdout  # progress lines
    with open(out / "results.csv") as f:
        (row,) = list(csv.DictReader(f))
    assert row["router"].startswith("dummy weights, gates re-drawn")
    assert float(row["lynx_experts_after"]) < float(row["lynx_experts_before"])
    assert float(row["lynx_remap_calls_per_layer"]) == 3  # output_len - 1 decode steps
    for key in ("gpu", "torch", "vllm", "lynx_ops", "git_sha", "date"):
        assert row[key], key
    assert (out / "tpot_vs_batch.png").read_bytes()[:4] == b"\x89PNG"
