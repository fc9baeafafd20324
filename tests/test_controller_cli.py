# SPDX-License-Identifier: Apache-2.0
"""`lynx-bench online --controller-file`: the Lynx side (only) gets Lynx's scheduler and the
controller file; bad settings stop the run before any server starts, naming the problem."""

from __future__ import annotations

import argparse
import json

import pytest

from lynx_ops.bench.commands import online as online_cmd
from lynx_ops.bench.commands.common import CONTROLLED_SCHEDULER, controller_side, policy_label


def _args(tmp_path, controller, policy=True):
    ap = argparse.ArgumentParser()
    online_cmd.add_cli_args(ap)
    argv = ["--shape", "qwen3-moe"]
    if policy:
        p = tmp_path / "budget.json"
        p.write_text(json.dumps({"policies": [{"model_type": "qwen3_moe", "kind": "budget",
                                               "budget": 128}]}))  # fmt: skip
        argv += ["--policy-file", str(p)]
    if controller is not None:
        c = tmp_path / "tpot.json"
        c.write_text(controller if isinstance(controller, str) else json.dumps(controller))
        argv += ["--controller-file", str(c)]
    return ap.parse_args(argv)


def test_the_lynx_side_gets_the_scheduler_and_the_file(tmp_path):
    args = _args(tmp_path, {"target_ms": 15, "ladder": [128, 64]})
    env, serve = controller_side(args)
    assert env["VLLM_LYNX_CONTROLLER_FILE"] == str((tmp_path / "tpot.json").resolve())
    assert serve == [f"--scheduler-cls={CONTROLLED_SCHEDULER}"]
    assert "TPOT controller" in policy_label(args) and '"target_ms": 15' in policy_label(args)
    assert controller_side(_args(tmp_path, None)) == ({}, [])


@pytest.mark.parametrize(
    "controller, policy, message",
    [
        ({"target_ms": 15, "ladder": [64, 128]}, True, "strictly decreasing"),
        ({"target_ms": 15}, True, "required"),
        ("[1, 2]", True, "JSON object"),
        ("{oops", True, "--controller-file"),
        ({"target_ms": 15, "ladder": [64]}, False, "give --policy-file"),
    ],
)
def test_bad_settings_stop_before_any_server(tmp_path, controller, policy, message):
    with pytest.raises(SystemExit, match=message):
        controller_side(_args(tmp_path, controller, policy))
