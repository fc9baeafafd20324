# SPDX-License-Identifier: Apache-2.0
"""The frontier in time: each policy's decode speed-up (`lynx-bench offline` on a GPU) beside what
the same setting costs in decode NLL on a trained model (`lynx-bench frontier`), per batch size.

    python perf/frontier_in_time.py --offline DIR... --frontier CSV... \
        [--default-policy FILE] [--shape qwen3-moe] --out DIR

Each offline DIR holds a results.csv whose `policy` column names what its Lynx side ran (a policy
file's entries, or "family default": give --default-policy, the file that equals the family
default of the commit that ran it). For every batch size the setting that policy takes there is
looked up in the frontier rows (several frontier runs of one model pool, as `lynx-bench choose`
does: the mean of a setting's rows). Writes frontier_in_time.csv and .png (speed-up against NLL
change, one panel per batch size) and prints the table.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import tempfile
from pathlib import Path

from lynx_ops.bench import model_configs
from lynx_ops.bench.choose import read_frontiers
from lynx_ops.bench.frontier import parse_setting
from lynx_ops.registry import BATCH_FIELDS, select_policy
from lynx_ops.registry.policy import Policy


def _policy(column: str, shape: str, default_file: str | None) -> Policy:
    config = model_configs.config(shape)
    if column == "family default":
        if not default_file:
            raise SystemExit("a run used the family default: give --default-policy FILE")
        return select_policy(config, config_file=default_file).policy
    with tempfile.TemporaryDirectory(prefix="lynx-policy-") as tmp:  # removed with the file
        path = Path(tmp) / "policy.json"
        path.write_text(json.dumps({"policies": json.loads(column)}))
        return select_policy(config, config_file=str(path)).policy


def _matches(setting: Policy, text: str) -> bool:
    fields = parse_setting(text)
    return setting.kind == fields["kind"] and all(
        getattr(setting, k) == v for k, v in fields.items() if k in BATCH_FIELDS
    )


def table(offline_dirs: list[Path], frontier_rows: list[dict], shape: str,
          default_file: str | None) -> list[dict]:  # fmt: skip
    out = []
    for d in offline_dirs:
        with open(d / "results.csv") as f:
            rows = list(csv.DictReader(f))
        for r in rows:
            batch = int(r["batch"])
            policy = _policy(r["policy"], shape, default_file)
            setting = policy.for_rows(batch)
            hits = [fr for fr in frontier_rows if fr["batch"] == batch
                    and _matches(setting, fr["setting"])]  # fmt: skip
            speed = r.get("speedup_tpot")
            out.append({
                "run": d.name, "batch": batch, "setting": setting.setting(),
                "speedup_tpot": float(speed) if speed else None,
                "stock_tpot_ms": float(r["stock_tpot_ms_reference"] or "nan"),
                "lynx_tpot_ms": float(r["lynx_tpot_ms_median"] or "nan"),
                "gpu_experts_before": _num(r.get("lynx_experts_before")),
                "gpu_experts_after": _num(r.get("lynx_experts_after")),
                "dnll_pct": statistics.fmean(h["dnll_pct"] for h in hits) if hits
                else (0.0 if setting.kind == "off" else None),
                "model_experts_after": statistics.fmean(h["experts_after"] for h in hits)
                if hits else None,
                "frontier_rows": len(hits), "git_sha": r.get("git_sha"), "gpu": r.get("gpu"),
                "router": r.get("router"),
            })  # fmt: skip
    return out


def _num(v):
    return float(v) if v not in (None, "") else None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--offline", nargs="+", required=True, type=Path)
    ap.add_argument("--frontier", nargs="+", required=True, type=Path)
    ap.add_argument("--default-policy", default=None)
    ap.add_argument("--shape", default="qwen3-moe", help="the offline runs' --shape")
    ap.add_argument("--batches", type=int, nargs="*", default=[8, 16, 32, 64])
    ap.add_argument("--out", required=True, type=Path)
    args = ap.parse_args()
    rows = [r for r in table(args.offline, read_frontiers(args.frontier), args.shape,
                             args.default_policy) if r["batch"] in args.batches]  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / "frontier_in_time.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    print(f"{'B':>3} {'run':44s} {'setting':44s} {'speed-up':>8} {'experts (GPU)':>15} "
          f"{'dNLL %':>7}")  # fmt: skip
    for r in sorted(rows, key=lambda r: (r["batch"], r["run"])):
        speed = f"{r['speedup_tpot']:.2f}x" if r["speedup_tpot"] else "-"
        nll = f"{r['dnll_pct']:+.2f}" if r["dnll_pct"] is not None else "-"
        ex = (f"{r['gpu_experts_before']:.1f} -> {r['gpu_experts_after']:.1f}"
              if r["gpu_experts_after"] is not None else "- (no remap)")  # fmt: skip
        print(f"{r['batch']:>3} {r['run']:44s} {r['setting']:44s} {speed:>8} {ex:>15} {nll:>7}")
    _plot(rows, args.batches, args.out / "frontier_in_time.png")
    print(f"wrote {args.out / 'frontier_in_time.csv'} and frontier_in_time.png")
    return 0


def _plot(rows: list[dict], batches: list[int], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = sorted({r["run"] for r in rows})
    cols = min(2, len(batches))
    nrows = -(-len(batches) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(6 * cols, 4 * nrows), squeeze=False)
    for ax, batch in zip(axes.flat, batches, strict=False):
        for i, run in enumerate(runs):
            for r in rows:
                if (r["run"], r["batch"]) != (run, batch) or r["dnll_pct"] is None \
                        or not r["speedup_tpot"]:  # fmt: skip
                    continue
                ax.scatter(r["dnll_pct"], r["speedup_tpot"], color=f"C{i}", label=run)
                ax.annotate(r["setting"], (r["dnll_pct"], r["speedup_tpot"]), fontsize=7,
                            xytext=(4, 2), textcoords="offset points")  # fmt: skip
        ax.axhline(1.0, color="grey", lw=0.8)
        ax.axvline(1.0, color="grey", lw=0.8, ls=":")
        ax.set_title(f"B = {batch}")
        ax.set_xlabel("decode NLL change, % (trained model)")
        ax.set_ylabel("decode TPOT speed-up vs stock")
    for ax in list(axes.flat)[len(batches) :]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=2, fontsize=8)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    raise SystemExit(main())
