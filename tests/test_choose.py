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
from lynx_ops.bench.choose import choose, policy_entry, write_policy
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
