# SPDX-License-Identifier: Apache-2.0
"""`lynx-bench soak` end to end on vllm-cpu, shortened: two `vllm serve` processes (flag off, on)
under mixed concurrent traffic and vLLM's own client, with a client cutting streams and sending
malformed requests;
every valid response complete, every malformed one refused with a 4xx, no server error, vLLM's
/metrics counting at least the traffic served, both servers alive. The 10-minute runs that judge
memory growth are in perf/results; this checks the tool and the serving path."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.vllm_cpu, pytest.mark.slow]
pytest.importorskip("vllm")


def test_lynx_bench_soak_tiny(tmp_path):
    out = tmp_path / "soak"
    proc = subprocess.run(
        [sys.executable, "-m", "lynx_ops.bench.cli", "soak", "--shape", "qwen3-moe", "--tiny",
         "--minutes", "0.5", "--off-minutes", "0.4", "--concurrency", "4", "--max-input", "48", "--max-output", "12",
         "--serve-arg=--kv-cache-memory-bytes=268435456", "--out", str(out)],
        capture_output=True, text=True, timeout=1200,
        env={**os.environ, "VLLM_LYNX_METRICS_INTERVAL": "1"},
    )  # fmt: skip
    assert (out / "soak.json").is_file(), proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((out / "soak.json").read_text())
    assert (result["spec"]["minutes"], result["spec"]["off_minutes"]) == (0.5, 0.4)
    runs = result["runs"]
    # The run so far, kept at every sample for a soak cut short: the finished run's last sample.
    (work,) = [d for d in out.iterdir() if d.is_dir() and d.name.startswith("lynx-soak-")]
    for mode in ("off", "on"):
        progress = json.loads((work / f"progress-{mode}.json").read_text())
        assert 0 < progress["requests"] <= runs[mode]["requests"], mode
        assert progress["rss_samples"] == runs[mode]["rss_samples"][: len(progress["rss_samples"])]
    for mode in ("off", "on"):
        r = runs[mode]
        assert r["requests"] > 4 and r["valid"] == r["requests"] and r["errors"] == 0, r
        assert r["server_alive"], mode
        b = r["bench_serve"]
        assert b["runs"] > 0 and b["completed"] > 0 and not b["failed_runs"], b
        a = r["abuse"]
        assert a["cut"] > 0 and a["malformed"] > 0, a
        assert a["server_errors"] == 0 and a["refused_4xx"] == a["malformed"], a
        assert r["metrics_consistent"], (r["vllm_counts"], r["valid"], r["tokens"])
    # the Lynx server did remap while serving this traffic
    assert runs["on"]["metrics"]["decode_remaps"] > 0
    # exit status: 0 unless something failed; memory growth over 30 s is not judged here
    assert proc.returncode == 0 or "resident memory grew" in proc.stdout, proc.stdout[-3000:]
