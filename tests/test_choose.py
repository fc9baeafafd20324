# SPDX-License-Identifier: Apache-2.0
"""`lynx-bench choose`: the stated rule on frontier rows, and the policy file it writes resolving,
through the registry, to exactly the setting the frontier measured at each batch size."""

from __future__ import annotations

import csv
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from lynx_ops import embedded
from lynx_ops.bench.choose import choose, controller_floors, policy_entry, write_policy
from lynx_ops.bench.frontier import parse_setting
from lynx_ops.registry import select_policy
from lynx_ops.registry.policy import BATCH_FIELDS


def _row(setting, batch, dnll, after, before=20.0):
    return {"setting": setting, "batch": batch, "dnll_pct": dnll, "experts_after": after,
            "experts_before": before}  # fmt: skip


ROWS = [
    _row("bins:alpha=3,beta=4", 8, 0.6, 13.0),
    _row("keep_k0:k0=2", 8, 1.5, 9.0),
    _row("bins:alpha=3,beta=4", 16, 0.2, 17.0),
    _row("bins:alpha=3,beta=2", 16, 0.8, 14.0),
    _row("budget:fraction=0.6", 16, 0.9, 14.0),  # same experts, larger NLL change: loses the tie
    _row("budget:fraction=0.45,batch_score=hist", 32, 0.4, 15.0),
    _row("bins:alpha=1,beta=1", 32, 1.2, 12.0),
]


def test_fewest_experts_within_the_limit_per_batch():
    got = choose(ROWS, 1.0)
    assert {b: r["setting"] for b, r in got.items()} == {
        8: "bins:alpha=3,beta=4", 16: "bins:alpha=3,beta=2",
        32: "budget:fraction=0.45,batch_score=hist",
    }  # fmt: skip
    got = choose(ROWS, 0.5)
    assert got[8] is None and got[16]["setting"] == "bins:alpha=3,beta=4"
    assert choose(ROWS, 2.0)[32]["setting"] == "bins:alpha=1,beta=1"


def test_controller_floors_stop_at_the_first_setting_past_the_limit():
    """From the largest measured k0 down, the floor is the last value within the limit: at B=8
    k0=5 costs too much, so k0=3 (within again, noise) does not count; a setting that changes
    another field too (batch_score) or another kind does not count either; where the largest
    measured value is past the limit, or nothing was measured, the floor is the ladder's top;
    a setting measured twice (pooled runs) counts with its larger change."""
    rows = [
        _row("keep_k0:k0=6", 8, 0.4, 30.0), _row("keep_k0:k0=5", 8, 1.9, 28.0),
        _row("keep_k0:k0=3", 8, 0.9, 20.0), _row("bins:alpha=3,beta=4", 8, 0.1, 25.0),
        _row("keep_k0:k0=6", 16, 0.3, 40.0), _row("keep_k0:k0=5", 16, 0.6, 38.0),
        _row("keep_k0:k0=4", 16, 0.8, 35.0), _row("keep_k0:k0=4", 16, 1.3, 35.0),
        _row("keep_k0:k0=6", 32, 1.5, 50.0), _row("keep_k0:k0=5", 32, 0.2, 48.0),
        _row("budget:budget=24", 64, 0.5, 60.0), _row("budget:budget=40", 64, 0.2, 70.0),
        _row("budget:budget=16,batch_score=hist", 64, 0.1, 50.0),
    ]  # fmt: skip
    assert controller_floors(rows, "keep_k0", 1.0, 8) == [[8, 6], [16, 5], [32, 8], [64, 8]]
    assert controller_floors(rows, "keep_k0", 2.0, 8) == [[8, 3], [16, 4], [32, 5], [64, 8]]
    assert controller_floors(rows, "budget", 1.0, 128) == [[8, 128], [16, 128], [32, 128],
                                                           [64, 24]]  # fmt: skip
    assert controller_floors(rows, "budget", 1.0, 32) == [[8, 32], [16, 32], [32, 32], [64, 24]]


@pytest.mark.skipif(not embedded.available(), reason="the embedded model is not in this tree")
@pytest.mark.parametrize("limit", [0.5, 1.0, 2.0])
def test_the_written_policy_resolves_to_the_measured_setting_at_every_batch(tmp_path, limit):
    config = json.loads((Path(embedded.MODEL_DIR) / "config.json").read_text())
    default = select_policy(config, config_file=None).policy
    picked = choose(ROWS, limit)
    path = tmp_path / "policy.json"
    write_policy(policy_entry(picked, config["model_type"], default), path)
    policy = select_policy(config, config_file=path).policy
    for batch, row in picked.items():
        # what the frontier ran: the family default with the setting's fields (or no remap)
        fields = parse_setting(row["setting"]) if row else {"kind": "off"}
        want = dataclasses.replace(default, **fields)
        for rows in (batch, batch - 1):  # the bucket covers the measured size and below it
            got = policy.for_rows(rows)
            assert {f: getattr(got, f) for f in BATCH_FIELDS} == {
                f: getattr(want, f) for f in BATCH_FIELDS
            }, (batch, rows)


@pytest.mark.skipif(not embedded.available(), reason="the embedded model is not in this tree")
def test_cli_on_a_frontier_csv(tmp_path):
    frontier = tmp_path / "frontier.csv"
    with open(frontier, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["model", *ROWS[0]])
        w.writeheader()
        for r in ROWS:
            w.writerow({"model": str(embedded.MODEL_DIR), **r})
    out = tmp_path / "p.json"
    proc = subprocess.run([sys.executable, "-m", "lynx_ops.bench.cli", "choose", "--frontier",
                           str(frontier), "--max-dnll-pct", "0.5", "--out", str(out)],
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "(none within the limit: off)" in proc.stdout
    entry = json.loads(out.read_text())["policies"][0]
    assert entry["kind"] == "budget" and entry["by_batch"][0]["kind"] == "off"
    ctl = tmp_path / "tpot.json"
    proc = subprocess.run([sys.executable, "-m", "lynx_ops.bench.cli", "choose", "--frontier",
                           str(frontier), "--out", str(out), "--controller-out", str(ctl),
                           "--ladder", "4", "3", "2", "--target-ms", "20"],
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    # keep_k0:k0=2 at B=8 costs 1.5%: past the 1% limit, so k0 stays at k=4 there
    assert json.loads(ctl.read_text()) == {"target_ms": 20.0, "ladder": [4, 3, 2],
                                           "floors": [[8, 4], [16, 4], [32, 4]]}  # fmt: skip
    assert "controller floors (keep_k0 k0, the same limit): B<=8: k0>=4" in proc.stdout
    too_high = subprocess.run([sys.executable, "-m", "lynx_ops.bench.cli", "choose", "--frontier",
                               str(frontier), "--out", str(out), "--controller-out", str(ctl),
                               "--ladder", "8", "4", "--target-ms", "20"],
                              capture_output=True, text=True, timeout=300)  # fmt: skip
    assert too_high.returncode != 0 and "at most at the router's k=4, got 8" in too_high.stderr
    bad = subprocess.run([sys.executable, "-m", "lynx_ops.bench.cli", "choose", "--frontier",
                          str(out), "--out", str(tmp_path / "q.json")],
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert bad.returncode != 0 and "not a frontier.csv" in bad.stderr


def _write_frontier(path, rows, model):
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["model", *rows[0]])
        w.writeheader()
        for r in rows:
            w.writerow({"model": model, **r})


def test_several_runs_of_one_model_pool_their_settings(tmp_path):
    from lynx_ops.bench import choose

    first, second = tmp_path / "a.csv", tmp_path / "b.csv"
    _write_frontier(first, ROWS, "m")
    extra = [{**ROWS[0], "setting": "keep_k0:k0=3", "experts_after": 0.5, "dnll_pct": 0.0}]
    _write_frontier(second, extra, "m")
    rows = choose.read_frontiers([first, second])
    assert len(rows) == len(ROWS) + 1
    batch = extra[0]["batch"]
    # the second run's setting wins its batch size: fewer experts, within any limit
    assert choose.choose(rows, 1.0)[int(batch)]["setting"] == "keep_k0:k0=3"
    assert choose.choose(choose.read_frontiers([first]), 1.0)[int(batch)]["setting"] != (
        "keep_k0:k0=3")  # fmt: skip
    _write_frontier(second, extra, "other")
    with pytest.raises(SystemExit, match="measured different models"):
        choose.read_frontiers([first, second])
