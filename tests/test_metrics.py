# SPDX-License-Identifier: Apache-2.0
"""The /metrics hand-off (lynx_ops.integration.metrics) and the stats thread, without vLLM: bad
worker files, stale workers, the metrics directory's safety, and telemetry that survives errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading

import pytest

pytest.importorskip("prometheus_client")

from lynx_ops.integration import metrics  # noqa: E402

ROW = {"layer": 3, "top_k": 8, "calls": 10, "before": 500, "after": 300, "top1": 80, "rows": 80,
       "moved": 40}  # fmt: skip


def _values(directory):
    out = {}
    for family in metrics.LynxCollector(directory).collect():
        for sample in family.samples:
            if "worker" in sample.labels:
                out[(sample.name, sample.labels.get("worker"))] = sample.value
    return out


def _controller_values(directory):
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in metrics.LynxCollector(directory).collect()
            for s in family.samples if "engine" in s.labels}  # fmt: skip


SNAPSHOT = {"target_ms": 12.0, "budget": 32, "average_ms": 13.5, "steps_at": {64: 10, 32: 4}}


def test_the_controller_reaches_metrics(tmp_path, monkeypatch, caplog):
    d = _private(tmp_path)
    monkeypatch.setenv(metrics.DIR_ENV, str(d))
    metrics.publish_controller(SNAPSHOT)
    me = str(os.getpid())
    values = _controller_values(d)
    assert values == {
        ("lynx_controller_budget", (("engine", me),)): 32,
        ("lynx_controller_target_ms", (("engine", me),)): 12.0,
        ("lynx_controller_step_ms", (("engine", me),)): 13.5,
        ("lynx_controller_decode_steps_total", (("budget", "64"), ("engine", me))): 10,
        ("lynx_controller_decode_steps_total", (("budget", "32"), ("engine", me))): 4,
    }
    # before the first measured step there is no average: that gauge is absent, not 0
    metrics.publish_controller({**SNAPSHOT, "average_ms": None, "steps_at": {}})
    assert set(_controller_values(d)) == {("lynx_controller_budget", (("engine", me),)),
                                          ("lynx_controller_target_ms", (("engine", me),))}  # fmt: skip
    (d / "controller-1.json").write_text(json.dumps({"pid": 1, "budget": "x"}))
    (d / "controller-2.json").write_text("{not json")
    assert len(_controller_values(d)) == 2  # the bad files are skipped, not fatal
    assert "controller-1.json" in caplog.text and "not a Lynx controller file" in caplog.text
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    dead = int(proc.stdout)
    (d / f"controller-{me}.json").rename(d / f"controller-{dead}.json")
    record = json.loads((d / f"controller-{dead}.json").read_text())
    (d / f"controller-{dead}.json").write_text(json.dumps({**record, "pid": dead}))
    assert _controller_values(d) == {}  # an engine that has exited is not served


def _private(tmp_path):
    d = tmp_path / "m"
    d.mkdir(mode=0o700)
    return d


def test_malformed_worker_files_are_skipped_not_fatal(tmp_path, caplog):
    d = _private(tmp_path)
    me = os.getpid()
    (d / f"worker-{me}.json").write_text(json.dumps({"pid": me, "layers": [ROW, {"layer": 1}]}))
    (d / "worker-1.json").write_text("{}")  # the probe's planted file: HTTP 500 before
    (d / "worker-2.json").write_text("{not json")
    (d / "worker-3.json").write_text(json.dumps({"pid": "x", "layers": 5}))
    values = _values(d)  # no exception
    assert values[("lynx_decode_remaps_total", str(me))] == 10
    assert values[("lynx_experts_per_step_after", str(me))] == 30
    assert {w for _, w in values} == {str(me)}
    assert "worker-1.json" in caplog.text and "malformed rows" in caplog.text


def test_exited_workers_are_not_served(tmp_path):
    d = _private(tmp_path)
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    dead = int(proc.stdout)
    (d / f"worker-{dead}.json").write_text(json.dumps({"pid": dead, "layers": [ROW]}))
    assert _values(d) == {}


def test_metrics_dir_must_be_private(tmp_path, monkeypatch):
    open_dir = tmp_path / "open"
    open_dir.mkdir()
    open_dir.chmod(0o777)
    link = tmp_path / "link"
    link.symlink_to(_private(tmp_path))
    for bad, why in ((open_dir, "writable by group or others"), (link, "symlinks are refused"),
                     (tmp_path / "missing", "cannot be used")):  # fmt: skip
        with pytest.raises(ValueError, match=why):
            metrics.check_private_dir(bad)
    metrics.check_private_dir(tmp_path / "m")  # 0700, ours: accepted
    monkeypatch.setenv(metrics.DIR_ENV, str(open_dir))
    with pytest.raises(ValueError, match="LYNX_METRICS_DIR"):
        metrics.metrics_dir()


def test_publish_does_not_follow_a_planted_link(tmp_path, monkeypatch):
    d = _private(tmp_path)
    victim = tmp_path / "victim"
    victim.write_text("precious")
    # the temporary name the previous code used, planted as a link to another file
    (d / f"worker-{os.getpid()}.tmp").symlink_to(victim)
    (d / f"worker-{os.getpid()}.json").symlink_to(victim)
    monkeypatch.setenv(metrics.DIR_ENV, str(d))
    metrics.publish([ROW])
    assert victim.read_text() == "precious"
    final = d / f"worker-{os.getpid()}.json"
    assert not final.is_symlink() and json.loads(final.read_text())["layers"] == [ROW]
    assert oct(final.stat().st_mode & 0o777) == "0o600"


def test_stats_thread_retries_after_an_error(monkeypatch):
    """One failed publication (ENOSPC, say) used to end telemetry for the worker's life."""
    import time

    from lynx_ops.integration import layer_state, telemetry

    calls, waits, clock = [], [], [0.0]

    def publish(rows):
        calls.append(rows)
        if len(calls) == 1:
            raise OSError(28, "No space left on device")

    def sleep(seconds):
        waits.append(seconds)
        clock[0] += seconds
        if len(waits) > 4:
            raise SystemExit  # ends the loop (outside its error handling)

    monkeypatch.setattr(metrics, "publish", publish)
    monkeypatch.setattr(time, "sleep", sleep)
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(layer_state, "LAYERS", {})
    errors = []
    thread = threading.Thread(target=lambda: _run(telemetry._stats_loop, errors), daemon=True)
    thread.start()
    thread.join(10)
    assert len(calls) >= 3, "telemetry stopped after the first error"
    assert waits[1] == 2 * waits[0], "no backoff after the error"
    assert waits[2] == waits[0], "the wait did not reset after a success"


def _run(loop, errors):
    try:
        loop(0.0, 2.0)
    except SystemExit:
        pass
    except Exception as e:  # pragma: no cover - reported by the assertions
        errors.append(e)


MULTIPROC_SCRIPT = r"""
import json, os, sys
from pathlib import Path
from prometheus_client import CollectorRegistry, generate_latest, multiprocess
from lynx_ops.integration import metrics
d = Path(os.environ["LYNX_METRICS_DIR"])
row = json.loads(sys.argv[1])
(d / f"worker-{os.getpid()}.json").write_text(json.dumps({"pid": os.getpid(), "layers": [row]}))
metrics.publish_controller({"target_ms": 12.0, "budget": 32, "average_ms": 13.5,
                            "steps_at": {64: 10, 32: 4}})
for _ in range(2):  # two engines' loggers in one API server: the gauges register once
    logger = metrics.stat_logger_class()(None, 0)
logger.record(None, None)
registry = CollectorRegistry()  # what vLLM serves under PROMETHEUS_MULTIPROC_DIR
multiprocess.MultiProcessCollector(registry)
print(generate_latest(registry).decode())
"""


def test_metrics_reach_a_multiprocess_registry(tmp_path):
    """With PROMETHEUS_MULTIPROC_DIR (vLLM sets it for --api-server-count > 1) /metrics serves
    prometheus_client's multiprocess registry, where the Lynx collector on the global registry
    never appeared; the API server now re-exports the workers' counters there."""
    pytest.importorskip("vllm")
    prom, lynx = tmp_path / "prom", _private(tmp_path)
    prom.mkdir()
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(prom), "LYNX_METRICS_DIR": str(lynx)}
    proc = subprocess.run([sys.executable, "-c", MULTIPROC_SCRIPT, json.dumps(ROW)],
                          capture_output=True, text=True, env=env, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("lynx_")]
    remaps = [ln for ln in lines if ln.startswith("lynx_decode_remaps_total{")]
    assert len(remaps) == 1 and remaps[0].endswith(" 10.0") and 'layer="3"' in remaps[0]
    assert any(
        ln.startswith("lynx_experts_per_step_after{") and ln.endswith(" 30.0") for ln in lines
    )
    budget = [ln for ln in lines if ln.startswith("lynx_controller_budget{")]
    assert len(budget) == 1 and budget[0].endswith(" 32.0")
    steps = [ln for ln in lines if ln.startswith("lynx_controller_decode_steps_total{")]
    assert len(steps) == 2 and any('budget="64"' in ln and ln.endswith(" 10.0") for ln in steps)
