# SPDX-License-Identifier: Apache-2.0
"""`lynx-bench frontier`: what each policy setting buys (fewer experts per decode step) and what
it costs (decode-phase NLL), on one trained checkpoint, through vLLM.

One stock engine, then one engine per setting (a policy file with that setting for the model's
`model_type`), each in its own process (bench/workers.py). Every engine scores the same windows:
`window_sets` disjoint sets of held-out windows, each batch's windows from independent documents
(fidelity.windows), at every batch size. The NLL change of a setting is paired: (setting - stock)
/ stock on the same windows, per window set; the table gives its mean and its min..max over the
sets. Only such paired changes mean anything: the absolute NLL moves more between window sets
than any setting moves it.

A setting is written KIND:key=value,...:
    bins:alpha=3,beta=2   budget:fraction=0.5   budget:budget=12,batch_score=hist   keep_k0:k0=2
The non-dominated settings per batch size (no other setting has both fewer experts after the remap
and a smaller NLL increase) form the frontier; it is printed, written (CSV, JSON with provenance)
and plotted.
"""

from __future__ import annotations

import enum
import json
import statistics
import tempfile
from pathlib import Path
from typing import Any

from lynx_ops.bench.provenance import provenance, write_csv
from lynx_ops.bench.workers import run_worker, scoring_engine
from lynx_ops.registry import PolicyError, check_overrides, router_shape, select_policy
from lynx_ops.registry.policy import BATCH_FIELDS


def parse_setting(text: str) -> dict[str, Any]:
    """'budget:fraction=0.5,batch_score=hist' -> {"kind": "budget", "fraction": 0.5, ...},
    validated as a policy (PolicyError names the field)."""
    kind, _, rest = text.partition(":")
    fields: dict[str, Any] = {"kind": kind}
    for pair in filter(None, rest.split(",")):
        key, eq, value = pair.partition("=")
        if not eq or not key:
            raise PolicyError(f"frontier setting {text!r}: expected KIND:key=value,...")
        try:
            number = float(value)
            fields[key] = int(number) if number.is_integer() and "." not in value else number
        except ValueError:
            fields[key] = value
    check_overrides(fields, f"frontier setting {text!r}")
    return fields


def file_value(value: Any) -> Any:
    """A Policy field as a policy file writes it (enums by their lower-case name)."""
    return value.name.lower() if isinstance(value, enum.Enum) else value


def default_grid(top_k: int) -> list[str]:
    """Lynx's bins around the default, budgets as shares of the step's union, keep-k0 from k/2
    down to 1: the three families over the range where they differ."""
    grid = ["bins:alpha=3,beta=4", "bins:alpha=3,beta=2", "bins:alpha=1,beta=2",
            "bins:alpha=1,beta=1"]  # fmt: skip
    grid += [f"budget:fraction={f}" for f in (0.8, 0.6, 0.45, 0.3)]
    grid += ["budget:fraction=0.6,batch_score=hist"]
    grid += [f"keep_k0:k0={k0}" for k0 in sorted({max(1, top_k // 2), max(1, top_k // 4), 1},
                                                 reverse=True)]  # fmt: skip
    return grid


def pareto(points: list[dict[str, Any]], x: str, y: str) -> list[dict[str, Any]]:
    """The points no other point beats on both `x` and `y` (smaller is better on both)."""
    return [p for p in points
            if not any(q[x] <= p[x] and q[y] <= p[y] and (q[x] < p[x] or q[y] < p[y])
                       for q in points)]  # fmt: skip


def compare(stock_rows: list[dict], rows: list[dict]) -> list[dict[str, Any]]:
    """One setting's rows against stock's, paired by (window set, batch): per batch size the mean
    NLL change in percent with its min..max over window sets, experts and shares as means."""
    base = {(r["window_set"], r["batch"]): r for r in stock_rows}
    by_batch: dict[int, list[tuple[dict, dict]]] = {}
    for r in rows:
        by_batch.setdefault(r["batch"], []).append((base[r["window_set"], r["batch"]], r))
    out = []
    for batch, pairs in sorted(by_batch.items()):
        deltas = [100 * (r["nll_per_token"] - s["nll_per_token"]) / s["nll_per_token"]
                  for s, r in pairs]  # fmt: skip

        def mean(key: str, pairs=pairs) -> float | None:
            values = [r[key] for _, r in pairs if r.get(key) is not None]
            return statistics.mean(values) if values else None

        out.append({
            "batch": batch, "window_sets": len(pairs),
            "dnll_pct": statistics.mean(deltas), "dnll_pct_min": min(deltas),
            "dnll_pct_max": max(deltas),
            "stock_nll": statistics.mean(s["nll_per_token"] for s, _ in pairs),
            "nll": statistics.mean(r["nll_per_token"] for _, r in pairs),
            "experts_before": mean("experts_before"), "experts_after": mean("experts_after"),
            "top1_kept": mean("top1_kept"), "moved_share": mean("moved_share"),
            "documents": min(r["documents"] for _, r in pairs),
        })  # fmt: skip
    return out


def resolve(config: dict, parsed: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each setting's policy-file fields: the setting's own over the family's current routing
    fields, all written out, so the setting runs at every batch size (an entry that sets routing
    fields drops the family's by_batch) and the run means the same after a family default
    changes."""
    family = select_policy(config, config_file=None).policy
    if family is None:
        raise SystemExit(f"frontier: Lynx has no policy for this model ({config['model_type']})")
    return {text: {**{f: file_value(getattr(family, f)) for f in BATCH_FIELDS}, **fields}
            for text, fields in parsed.items()}  # fmt: skip


def run(model: str, settings: list[str], batches: list[int], window_sets: int, prompt_len: int,
        forced_len: int, engine: dict, out_dir: Path) -> int:  # fmt: skip
    config = json.loads((Path(model) / "config.json").read_text())
    model_type = config["model_type"]
    num_experts, top_k = router_shape(config)
    if not num_experts or not top_k:
        raise SystemExit(f"frontier: {model} is not an MoE checkpoint (no experts/top-k in its "
                         "config.json)")  # fmt: skip
    grid = settings or default_grid(top_k)  # budgets as shares scale with E
    parsed = {s: parse_setting(s) for s in grid}  # every setting checked before any engine runs
    resolved = resolve(config, parsed)
    out_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="lynx-frontier-", dir=out_dir))
    spec = {"model": model, "batches": batches, "window_sets": window_sets,
            "prompt_len": prompt_len, "forced_len": forced_len, "greedy_len": 0,
            "engine": scoring_engine({"max_model_len": prompt_len + forced_len + 8,
                                      "max_num_seqs": max(batches), **engine})}  # fmt: skip
    module = "lynx_ops.bench.fidelity"
    stock = run_worker("stock", spec, {}, work, module)
    prov = provenance()
    table = []
    for i, (text, fields) in enumerate(parsed.items()):
        policy_file = work / f"policy-{i}.json"
        entry = {"model_type": model_type, **resolved[text]}
        policy_file.write_text(json.dumps({"policies": [entry]}))
        env = {"VLLM_LYNX_ENABLED": "1", "VLLM_LYNX_CONFIG_FILE": str(policy_file)}
        result = run_worker(f"setting{i}", spec, env, work, module)
        for row in compare(stock["rows"], result["rows"]):
            table.append({"setting": text, "kind": fields["kind"], **row})
    for batch in batches:
        points = [r for r in table if r["batch"] == batch and r["experts_after"] is not None]
        for r in pareto(points, "experts_after", "dnll_pct"):
            r["frontier"] = True
    for r in table:
        r.setdefault("frontier", False)
    write_csv(out_dir / "frontier.csv", [{"model": model, **r, **prov} for r in table])
    (out_dir / "frontier.json").write_text(json.dumps(
        {"model": model, "spec": spec, "settings": parsed, "resolved": resolved, "stock": stock,
         "rows": table,
         **prov}, indent=1))  # fmt: skip
    _print(model, table, batches, window_sets)
    try:
        from lynx_ops.bench.plot import plot_frontier

        label = f"{model_type} at {Path(model).parent.name}/{Path(model).name}"
        print(f"plot: {plot_frontier(table, batches, out_dir, label)}")
    except ImportError as e:
        print(f"no plot: {e}")
    print(f"results: {out_dir / 'frontier.csv'}  logs: {work}")
    return 0


def _print(model: str, table: list[dict], batches: list[int], window_sets: int) -> None:
    print(f"\n{model}: decode-phase NLL change against stock (mean [min..max] over {window_sets} "
          "window sets, paired) and distinct experts per MoE layer; * = on the frontier")  # fmt: skip
    print(f"{'B':>3} {'setting':<38} {'experts':>13} {'NLL change %':>22} {'top-1 kept':>10} "
          f"{'moved':>6}")  # fmt: skip
    for batch in batches:
        for r in sorted((r for r in table if r["batch"] == batch),
                        key=lambda r: (r["experts_after"] or 0)):  # fmt: skip
            ex = (f"{r['experts_before']:.1f}->{r['experts_after']:.1f}"
                  if r["experts_after"] is not None else "-")  # fmt: skip
            spread = f"{r['dnll_pct']:+.2f} [{r['dnll_pct_min']:+.2f}..{r['dnll_pct_max']:+.2f}]"
            top1 = "-" if r["top1_kept"] is None else f"{r['top1_kept']:.3f}"
            moved = "-" if r["moved_share"] is None else f"{r['moved_share']:.3f}"
            star = "*" if r["frontier"] else " "
            print(f"{batch:>3} {star}{r['setting']:<37} {ex:>13} {spread:>22} {top1:>10} "
                  f"{moved:>6}")  # fmt: skip
