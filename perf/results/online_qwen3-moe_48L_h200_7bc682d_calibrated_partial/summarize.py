"""Rows for an online run cut short: the project's own per-run summary, goodput and aggregation
(lynx_ops.bench.online) applied to vLLM's saved result files; engine steps from the run's log."""

import csv
import glob
import json
import re
import sys
from pathlib import Path

from lynx_ops.bench import online

src, dst = Path(sys.argv[1]), Path(sys.argv[2])
slos = json.loads((src / "slo.json").read_text())["slo_ms"]
steps = {}
for line in (src.parent / "online_qwen3-moe.log").read_text().splitlines():
    m = re.match(
        r"\[(\w+)\] concurrency (\d+) run (\d+)/\d+: .*, (\d+) steps(?:, (\d+) remapped, experts ([\d.]+) -> ([\d.]+))?",
        line,
    )
    if m:
        steps[(m[1], int(m[2]), int(m[3]) - 1)] = m.groups()[3:]
rows = []
for f in sorted(glob.glob(str(src / "*/*/*-r*.json"))):
    name = Path(f).name
    m = re.match(r"(\w+?)-concurrency(\d+)-r(\d+)\.json", name)
    if not m or "warmup" in name:
        continue
    side, c, r = m[1], int(m[2]), int(m[3])
    res = json.loads(Path(f).read_text())
    row = {
        "side": side,
        "load": "concurrency",
        "value": float(c),
        "repeat": r,
        "num_prompts": len(res["output_lens"]),
        **online._summary(res),
    }
    st = steps[(side, c, r)]
    row["engine_steps"] = float(st[0])
    row["preemptions"] = None
    row["remapped_steps"] = float(st[1]) if st[1] else None
    row["experts_before"] = float(st[2]) if st[2] else None
    row["experts_after"] = float(st[3]) if st[3] else None
    itls = [x for i in res["itls"] for x in i]
    row["max_itl_ms"] = round(1000 * max(itls), 1)
    row["itl_over_200ms"] = sum(x > 0.2 for x in itls)
    row["_tpots_ms"], row["_output_lens"] = online.request_tpots_ms(res), res["output_lens"]
    online.add_goodput(row, slos)
    rows.append(row)
keys = [k for k in rows[0] if not k.startswith("_") and k != "errors"]
with open(dst / "client_runs.csv", "w", newline="") as fh:
    w = csv.DictWriter(fh, keys, extrasaction="ignore")
    w.writeheader()
    w.writerows(rows)
agg = online.aggregate(rows, slos)
with open(dst / "aggregate.csv", "w", newline="") as fh:
    w = csv.DictWriter(fh, list(agg[0]))
    w.writeheader()
    w.writerows(agg)
for a in sorted(agg, key=lambda a: (a["value"], a["side"])):
    print(
        f"{a['side']:12s} C={a['value']:4.0f} n={a['repeats']} tok/s {a['output_tok_s']:7.1f} [{a['output_tok_s_min']:.0f}-{a['output_tok_s_max']:.0f}] "
        f"TPOT p50 {a['tpot_ms_p50']:6.2f} [{a['tpot_ms_p50_min']:.2f}-{a['tpot_ms_p50_max']:.2f}] TTFT p50 {a['ttft_ms_p50']:7.1f} "
        f"steps {a['engine_steps']} remapped {a['remapped_steps']} experts {a['experts_before']}->{a['experts_after']} "
        + " ".join(f"{s:.1f}:{a[f'goodput_req_s@{s:.2f}ms']:.2f}" for s in slos)
    )

from lynx_ops.bench import plot  # noqa: E402

plot.plot_online(agg, slos, dst, "router: calibrated (spread 1.2, skew 0.1)")
