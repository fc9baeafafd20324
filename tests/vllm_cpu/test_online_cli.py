# SPDX-License-Identifier: Apache-2.0
"""`lynx-bench online` end to end on vllm-cpu: a stock and a Lynx `vllm serve`, driven by vLLM's
own client (`vllm bench serve`, random dataset) at closed-loop concurrency points, SLOs declared
from stock's single-request TPOT, goodput cross-checked against the one vLLM's client computes,
router drawn by the lynx_dummy load format, Lynx's counters on /metrics. A smoke test of the tool
on a 2-core CPU; its timings are not performance numbers."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.vllm_cpu, pytest.mark.slow]
pytest.importorskip("vllm")


def _online(out, *extra):
    return subprocess.run(
        [sys.executable, "-m", "lynx_ops.bench.cli", "online", "--shape", "qwen3-moe", "--tiny",
         "--concurrency", "1", "4", "--repeats", "2", "--repeat-at", "4", "--input-len", "16",
         "--output-len", "16", "--min-prompts", "4", "--no-stock-again",
         "--serve-arg=--kv-cache-memory-bytes=268435456", "--out", str(out), *extra],
        capture_output=True, text=True, timeout=1800,
        env={**os.environ, "VLLM_LYNX_METRICS_INTERVAL": "1"},
    )  # fmt: skip


def test_lynx_bench_online_tiny(tmp_path):
    out = tmp_path / "online"
    proc = _online(out)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "TPOT SLOs (declared before the run): 2x" in proc.stdout
    slo = json.loads((out / "slo.json").read_text())
    assert len(slo["slo_ms"]) == 3 and slo["slo_ms"][0] == pytest.approx(
        2 * slo["stock_c1_median_tpot_ms"]
    )
    with open(out / "online.csv") as f:
        agg = {(r["side"], float(r["value"])): r for r in csv.DictReader(f)}
    assert set(agg) == {(s, c) for s in ("stock", "lynx") for c in (1.0, 4.0)}
    assert agg["lynx", 4.0]["repeats"] == "2" and agg["lynx", 1.0]["repeats"] == "1"
    for row in agg.values():
        assert int(row["failed"]) == 0 and int(row["completed"]) > 0
        assert float(row["tpot_ms_p50"]) > 0 and float(row["output_tok_s"]) > 0
    lynx4 = agg["lynx", 4.0]
    assert float(lynx4["experts_after"]) < float(lynx4["experts_before"])
    assert 0 < float(lynx4["remapped_steps"]) <= float(lynx4["engine_steps"])
    assert "router preset calibrated" in lynx4["router"]
    data = json.loads((out / "online.json").read_text())
    runs = data["runs"]
    assert runs["lynx"]["router"]["gates"] > 0  # drawn by the lynx_dummy load format
    # our goodput (from vLLM's per-request detail) equals vLLM's own at the SLO it was given
    checked = 0
    for side in runs.values():
        for row in side["rows"]:
            if row.get("request_goodput") is not None:
                mid = slo["slo_ms"][1]
                assert row[f"goodput_req_s@{mid:.2f}ms"] == pytest.approx(row["request_goodput"])
                checked += 1
    assert checked >= 4
    assert (out / "throughput_vs_tpot.png").is_file()
    assert "best throughput with p50 TPOT <=" in proc.stdout
    # Prometheus /metrics: the Lynx families with the flag on, none with it unset
    assert runs["stock"]["metrics"]["families"] == []
    m = runs["lynx"]["metrics"]
    assert {"lynx_decode_remaps_total", "lynx_experts_per_step_before",
            "lynx_experts_per_step_after", "lynx_moved_assignment_share"} <= set(m["families"])  # fmt: skip
    assert m["decode_remaps"] > 0
    assert m["experts_per_step_after"] < m["experts_per_step_before"]
    # every load point was warmed up with a run of its own shape, not recorded; one client
    # process served them all, each run's output in its own log
    (work,) = out.glob("lynx-online-*")
    for side in ("stock", "lynx"):
        for c in (1, 4):
            warm = work / side / f"{side}-warmup-concurrency{c}-r0.json"
            assert json.loads(warm.read_text())["completed"] > 0
        runs_logs = sorted((work / side).glob(f"client-{side}-concurrency*.json.log"))
        assert len(runs_logs) == 3  # C=1 once, C=4 twice
        for log in runs_logs:
            assert log.read_text().count("Serving Benchmark Result") == 1
    with open(out / "online_runs.csv") as f:
        per_run = list(csv.DictReader(f))
    assert len(per_run) == 6 and all(int(r["jit_events"]) >= 0 for r in per_run)

    # A second call serves another policy against the same stock server: only its Lynx server
    # starts, and the first call's declared SLOs apply
    policy = tmp_path / "policy.json"
    policy.write_text(
        json.dumps({"policies": [{"model_type": "qwen3_moe", "alpha": 1, "beta": 1}]})
    )
    again = _online(tmp_path / "online2", "--policy-file", str(policy), "--reuse",
                    str(out / "online.json"))  # fmt: skip
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "[stock] reused from" in again.stdout and "[lynx] starting" in again.stdout
    assert "[stock] starting" not in again.stdout
    assert json.loads((tmp_path / "online2" / "slo.json").read_text())["slo_ms"] == slo["slo_ms"]
    with open(tmp_path / "online2" / "online.csv") as f:
        agg2 = {(r["side"], float(r["value"])): r for r in csv.DictReader(f)}
    assert agg2["stock", 4.0]["output_tok_s"] == agg["stock", 4.0]["output_tok_s"]
    assert '"alpha": 1' in agg2["lynx", 4.0]["policy"]
