# SPDX-License-Identifier: Apache-2.0
"""Lynx's scheduler without an engine: what counts as a decode step, and the startup refusals
(each names the problem) for a missing or bad controller file, parallel engines, a flag left
unset and layers without a budget policy. The engine itself: tests/vllm_cpu/test_controller_engine.py."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from lynx_ops.integration import scheduler
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


def _fake(tp=1, pp=1, dp=1):
    par = SimpleNamespace(tensor_parallel_size=tp, pipeline_parallel_size=pp, data_parallel_size=dp)
    fake = scheduler._Controlled()
    fake.vllm_config = SimpleNamespace(parallel_config=par)
    return fake


@pytest.fixture
def controller_file(tmp_path, monkeypatch):
    path = tmp_path / "tpot.json"
    path.write_text(json.dumps({"target_ms": 12, "ladder": [64, 32]}))
    monkeypatch.setenv("VLLM_LYNX_ENABLED", "1")
    monkeypatch.setenv("VLLM_LYNX_CONTROLLER_FILE", str(path))
    LAYERS.clear()
    yield path
    LAYERS.clear()


def test_refusals_name_the_problem(controller_file, monkeypatch):
    with pytest.raises(scheduler.ControllerSetupError, match="tensor_parallel_size': 2"):
        _fake(tp=2)._lynx_setup()
    with pytest.raises(scheduler.ControllerSetupError, match="covers no layer"):
        _fake()._lynx_setup()
    LAYERS["model.layers.0.mlp"] = SimpleNamespace(budget=None, policy=SimpleNamespace(kind="bins"))
    with pytest.raises(scheduler.ControllerSetupError, match=r"run \['bins'\]"):
        _fake()._lynx_setup()
    controller_file.write_text(json.dumps({"target_ms": 12, "ladder": [32, 64]}))
    with pytest.raises(scheduler.ControllerSetupError, match="strictly decreasing"):
        _fake()._lynx_setup()
    controller_file.write_text("{not json")
    with pytest.raises(scheduler.ControllerSetupError, match="cannot be read as JSON"):
        _fake()._lynx_setup()
    monkeypatch.delenv("VLLM_LYNX_CONTROLLER_FILE")
    with pytest.raises(scheduler.ControllerSetupError, match="needs VLLM_LYNX_CONTROLLER_FILE"):
        _fake()._lynx_setup()
    monkeypatch.setenv("VLLM_LYNX_ENABLED", "0")
    with pytest.raises(scheduler.ControllerSetupError, match="VLLM_LYNX_ENABLED is not set"):
        _fake()._lynx_setup()


def test_setup_writes_the_top_k_and_steps_move_it(controller_file):
    import torch

    scalars = [torch.full((1,), 5, dtype=torch.int32) for _ in range(2)]
    for i, s in enumerate(scalars):
        LAYERS[f"model.layers.{i}.mlp"] = SimpleNamespace(
            budget=s, policy=SimpleNamespace(kind="budget")
        )
    fake = _fake()
    fake._lynx_setup()
    assert [int(s) for s in scalars] == [64, 64]
    fake._lynx.config = scheduler.ControllerConfig(target_ms=1e-9, ladder=(64, 32), patience=1,
                                                   smoothing=1.0)  # fmt: skip
    decode = _output({"a": 1, "b": 1})
    for _ in range(3):
        fake._lynx_step_done(decode)
    assert [int(s) for s in scalars] == [32, 32]
    fake._lynx_step_done(_output({"a": 7}))  # a prefill step breaks the interval
    assert fake._lynx_last is None
