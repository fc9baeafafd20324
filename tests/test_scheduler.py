# SPDX-License-Identifier: Apache-2.0
"""Lynx's scheduler and its worker half (budget_sync) without an engine: what counts as a decode
step, the K each scheduled step carries and each rank applies, and the startup refusals (each
names the problem) for a missing or bad controller file, data parallelism, a flag left unset, a
controller file without Lynx's scheduler, layers without a budget or keep_k0 policy, layers of both
kinds and a k0 ladder above the router's k. The engine itself:
tests/vllm_cpu/test_controller_engine.py (one worker and tensor parallel)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from lynx_ops import plugin
from lynx_ops.integration import budget_sync, scheduler
from lynx_ops.integration.budget_sync import ControllerSetupError
from lynx_ops.integration.layer_state import LAYERS


def _output(tokens: dict, new=(), spec=None):
    return SimpleNamespace(scheduled_new_reqs=list(new), num_scheduled_tokens=tokens,
                           scheduled_spec_decode_tokens=spec or {})  # fmt: skip


def test_decode_steps():
    assert scheduler._is_decode(_output({"a": 1, "b": 1}))
    assert scheduler._is_decode(_output({"a": 3, "b": 1}, spec={"a": [7, 8]}))
    assert not scheduler._is_decode(_output({"a": 1, "b": 5}))  # a chunk of a prefill
    assert not scheduler._is_decode(_output({"a": 1}, new=["b"]))
    assert not scheduler._is_decode(_output({}))


class _BaseScheduler:
    unfinished = True

    def schedule(self):
        return SimpleNamespace()

    def update_from_output(self, scheduler_output, model_runner_output):
        return {}

    def has_unfinished_requests(self):
        return self.unfinished


class _Fake(scheduler._Controlled, _BaseScheduler):
    pass


def _fake(tp=1, pp=1, dp=1):
    par = SimpleNamespace(tensor_parallel_size=tp, pipeline_parallel_size=pp, data_parallel_size=dp)
    fake = _Fake()
    fake.vllm_config = SimpleNamespace(parallel_config=par)
    return fake


@pytest.fixture
def controller_file(tmp_path, monkeypatch):
    path = tmp_path / "tpot.json"
    path.write_text(json.dumps({"target_ms": 12, "ladder": [64, 32]}))
    monkeypatch.setenv("VLLM_LYNX_ENABLED", "1")
    monkeypatch.setenv("VLLM_LYNX_CONTROLLER_FILE", str(path))
    monkeypatch.setitem(plugin._STATE, "installed", True)
    LAYERS.clear()
    budget_sync._APPLIED["k"] = None
    yield path
    LAYERS.clear()
    budget_sync._APPLIED["k"] = None


def test_refusals_name_the_problem(controller_file, monkeypatch):
    with pytest.raises(ControllerSetupError, match="data_parallel_size=2"):
        _fake(dp=2)._lynx_setup()
    _fake(tp=2, pp=2)._lynx_setup()  # ranks agree through the scheduler output (budget_sync)
    monkeypatch.setitem(plugin._STATE, "installed", False)
    with pytest.raises(ControllerSetupError, match="plugin did not install"):
        _fake()._lynx_setup()
    monkeypatch.setitem(plugin._STATE, "installed", True)
    controller_file.write_text(json.dumps({"target_ms": 12, "ladder": [32, 64]}))
    with pytest.raises(ControllerSetupError, match="strictly decreasing"):
        _fake()._lynx_setup()
    controller_file.write_text("{not json")
    with pytest.raises(ControllerSetupError, match="cannot be read as JSON"):
        _fake()._lynx_setup()
    monkeypatch.delenv("VLLM_LYNX_CONTROLLER_FILE")
    with pytest.raises(ControllerSetupError, match="needs VLLM_LYNX_CONTROLLER_FILE"):
        _fake()._lynx_setup()
    monkeypatch.setenv("VLLM_LYNX_ENABLED", "0")
    with pytest.raises(ControllerSetupError, match="VLLM_LYNX_ENABLED is not set"):
        _fake()._lynx_setup()


def _layer(knob, kind: str, top_k: int = 8):
    return SimpleNamespace(knob=knob, policy=SimpleNamespace(kind=kind),
                           facts=SimpleNamespace(top_k=top_k))  # fmt: skip


def test_worker_startup_checks_name_the_problem(controller_file):
    import torch

    with pytest.raises(ControllerSetupError, match="covers no layer"):
        budget_sync.check_layers()
    LAYERS["model.layers.0.mlp"] = _layer(None, "bins")
    with pytest.raises(ControllerSetupError, match=r"run \['bins'\]"):
        budget_sync.check_layers()
    LAYERS["model.layers.1.mlp"] = _layer(torch.ones(1, dtype=torch.int32), "keep_k0")
    assert budget_sync.check_layers((8, 6)) == ("keep_k0", 1)  # the bins layer is not turned
    with pytest.raises(ControllerSetupError, match=r"ladder \[9, 6\] turns keep_k0's k0, which "
                       r"is at most the router's k=8: start the ladder at 8"):  # fmt: skip
        budget_sync.check_layers((9, 6))
    LAYERS["model.layers.2.mlp"] = _layer(torch.ones(1, dtype=torch.int32), "budget")
    with pytest.raises(ControllerSetupError, match=r"layers run \['budget', 'keep_k0'\]: give "
                       "them one of the two"):  # fmt: skip
        budget_sync.check_layers((8, 6))

    def config(cls):
        return SimpleNamespace(scheduler_config=SimpleNamespace(scheduler_cls=cls))

    budget_sync.check_scheduler(config("lynx_ops.integration.scheduler.LynxAsyncScheduler"))
    budget_sync.check_scheduler(config(scheduler.LynxScheduler))
    with pytest.raises(ControllerSetupError, match="scheduler is vllm.v1.core.sched.scheduler.Sch"):
        budget_sync.check_scheduler(config(scheduler.Scheduler))
    with pytest.raises(ControllerSetupError, match=r"scheduler is vLLM's own \(no --scheduler-cls"):
        budget_sync.check_scheduler(config(None))


def test_scheduled_steps_carry_k_and_each_rank_applies_it(controller_file):
    import torch

    scalars = [torch.full((1,), 5, dtype=torch.int32) for _ in range(2)]
    for i, s in enumerate(scalars):
        LAYERS[f"model.layers.{i}.mlp"] = _layer(s, "budget")
    assert budget_sync.check_layers() == ("budget", 2)
    fake = _fake()
    fake._lynx_setup()
    first = fake.schedule()
    assert first.lynx_budget == 64  # the ladder's top until a step is measured
    assert [int(s) for s in scalars] == [5, 5]  # the scheduler writes nothing itself
    budget_sync.apply(first)
    assert [int(s) for s in scalars] == [64, 64] and budget_sync.applied() == 64
    fake._lynx.config = scheduler.ControllerConfig(target_ms=1e-9, ladder=(64, 32), patience=1,
                                                   smoothing=1.0)  # fmt: skip
    decode = _output({"a": 1, "b": 1})
    for _ in range(3):
        fake._lynx_step_done(decode)
    later = fake.schedule()
    assert later.lynx_budget == 32
    scalars[0].fill_(7)  # applied only where K changed: an unchanged K is not rewritten
    budget_sync.apply(first)
    assert int(scalars[0]) == 7
    budget_sync.apply(later)
    assert [int(s) for s in scalars] == [32, 32]
    budget_sync.apply(SimpleNamespace())  # a step from another scheduler carries no K
    assert [int(s) for s in scalars] == [32, 32]
    fake._lynx_step_done(_output({"a": 7}))  # a prefill step breaks the interval
    assert fake._lynx_last is None


def test_the_controller_publishes_its_snapshot_for_metrics(controller_file, tmp_path, monkeypatch):
    d = tmp_path / "metrics"
    d.mkdir(mode=0o700)
    monkeypatch.setenv("LYNX_METRICS_DIR", str(d))
    _fake()._lynx_setup()
    (path,) = d.glob("controller-*.json")
    record = json.loads(path.read_text())
    assert record["budget"] == 64 and record["target_ms"] == 12
    assert record["steps_at"] == {"64": 0, "32": 0}  # no decode step yet
    monkeypatch.setenv("VLLM_LYNX_METRICS_INTERVAL", "0")  # metrics off: nothing written
    path.unlink()
    _fake()._lynx_setup()
    assert not list(d.glob("controller-*.json"))


def test_the_controller_publishes_when_the_engine_goes_idle(controller_file, monkeypatch):
    """/metrics must hold every step of the work just finished: a benchmark reads the settings a
    run used from the counters' difference across it. Before, a run's last steps waited for the
    next metrics interval, i.e. the next run's traffic."""
    from lynx_ops.integration import metrics

    published = []
    monkeypatch.setattr(metrics, "publish_controller", lambda snap: published.append(snap))
    monkeypatch.setenv("VLLM_LYNX_METRICS_INTERVAL", "3600")  # no timed publication in the test
    fake = _fake()
    fake._lynx_setup()
    assert len(published) == 1  # the startup state
    decode = _output({"a": 1, "b": 1})
    for _ in range(5):
        fake.update_from_output(decode, None)
    assert len(published) == 1  # requests still running: the interval decides
    fake.unfinished = False
    fake.update_from_output(decode, None)  # the step that finished the last request
    assert len(published) == 2 and sum(published[-1]["steps_at"].values()) == 5
    fake.update_from_output(_output({}), None)  # idle again, nothing new: no rewrite
    assert len(published) == 2
