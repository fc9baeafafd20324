# SPDX-License-Identifier: Apache-2.0
"""`lynx-bench online`: `vllm serve`, stock / Lynx / stock, driven by vLLM's own client
(bench/online.py)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from lynx_ops.bench.commands.common import (
    add_controller_arg,
    add_policy_arg,
    add_router_args,
    add_source_args,
    controller_side,
    lynx_env,
    policy_label,
    read_reuse,
    serve_setup,
)
from lynx_ops.bench.provenance import provenance, write_csv

HELP = "vllm serve, stock vs Lynx, driven by vllm bench serve"


def add_cli_args(parser: argparse.ArgumentParser) -> None:
    add_source_args(parser, "CPU smoke tests only")
    add_router_args(parser)
    add_policy_arg(parser)
    add_controller_arg(parser)
    parser.add_argument("--concurrency", type=int, nargs="*", default=[1, 8, 16, 32, 64, 128],
                        help="closed-loop points: at most C requests in flight")  # fmt: skip
    parser.add_argument("--request-rates", type=float, nargs="*", default=[],
                        help="open-loop points: Poisson arrivals at these requests/s")  # fmt: skip
    parser.add_argument("--repeats", type=int, default=3, help="runs at each --repeat-at point")
    parser.add_argument("--repeat-at", type=float, nargs="*", default=[32, 64, 128],
                        help="load points (concurrency or rate) that get --repeats runs; others 1")  # fmt: skip
    parser.add_argument("--input-len", type=int, default=512)
    parser.add_argument("--output-len", type=int, default=256)
    parser.add_argument("--prompts-per-concurrency", type=float, default=4.0,
                        help="requests per closed-loop run, as a multiple of C")  # fmt: skip
    parser.add_argument("--min-prompts", type=int, default=8)
    parser.add_argument("--rate-duration", type=float, default=30.0,
                        help="seconds of arrivals per open-loop run")  # fmt: skip
    parser.add_argument("--slo-multipliers", type=float, nargs="*", default=[2.0, 3.0, 4.0],
                        help="TPOT SLOs as multiples of stock's median TPOT at concurrency 1")  # fmt: skip
    parser.add_argument("--slo-ms", type=float, nargs="*", default=[], help="TPOT SLOs in ms")
    parser.add_argument("--stock-again", action=argparse.BooleanOptionalAction, default=True,
                        help="a second stock server after Lynx (stock, Lynx, stock)")  # fmt: skip
    parser.add_argument("--serve-arg", action="append", default=[], metavar="--flag=value")
    parser.add_argument("--reuse", metavar="ONLINE_JSON",
                        help="take the stock servers (and their declared SLOs) from an earlier "
                             "online.json of the same workload instead of running them again; "
                             "its Lynx server only when it ran the same --policy-file")  # fmt: skip
    parser.add_argument("--out", default="perf/results/lynx-online")


def main(args: argparse.Namespace) -> int:
    from lynx_ops.bench import online

    out_dir, work, model, _, serve_args = serve_setup(
        args, "lynx-online-", args.input_len + args.output_len
    )
    points = [("concurrency", float(c)) for c in args.concurrency]
    points += [("rate", float(r)) for r in args.request_rates]
    if not points:
        raise SystemExit("online: give --concurrency and/or --request-rates")
    if args.slo_multipliers and 1 not in args.concurrency:
        raise SystemExit("--slo-multipliers are multiples of stock's TPOT at concurrency 1: "
                         "include 1 in --concurrency, or give --slo-ms")  # fmt: skip
    spec = {"points": points, "repeats": args.repeats,
            "repeat_at": [float(v) for v in args.repeat_at], "input_len": args.input_len,
            "output_len": args.output_len, "min_prompts": args.min_prompts,
            "prompts_per_concurrency": args.prompts_per_concurrency,
            "rate_duration_s": args.rate_duration, "slo_multipliers": args.slo_multipliers,
            "slo_abs_ms": args.slo_ms, "slo_ms": [], "lynx_sides": {"lynx": True},
            "slo_file": str(out_dir / "slo.json")}  # fmt: skip
    print("TPOT SLOs (declared before the run): "
          + ", ".join([f"{m:g}x stock's single-request TPOT" for m in args.slo_multipliers]
                      + [f"{v:g} ms" for v in args.slo_ms]), flush=True)  # fmt: skip
    control_env, control_args = controller_side(args)  # only the Lynx side runs Lynx's scheduler
    spec["controller"] = getattr(args, "controller_file", None)  # runs record its settings
    sides = [("stock", {}, []), ("lynx", {**lynx_env(args), **control_env}, control_args)]
    if args.stock_again:
        sides.append(("stock_again", {}, []))
    workload = _workload(spec, args, serve_args)
    reused = _load_reuse(args.reuse, workload, policy_label(args), spec) if args.reuse else {}
    runs = {}
    for label, env, extra in sides:
        if label in reused:
            print(f"[{label}] reused from {args.reuse}", flush=True)
            runs[label] = reused[label]
            continue
        side_dir = work / label
        side_dir.mkdir()
        runs[label] = online.run_side(label, model, serve_args + extra, env, spec, side_dir,
                                      log=lambda m: print(m, flush=True))  # fmt: skip
    slos = spec["slo_ms"]
    rows = [r for res in runs.values() for r in res["rows"]]
    agg = online.aggregate(rows, slos)
    prov = provenance()
    base = {"model": args.shape or args.model, "layers": args.layers, "router": args.router_label,
            "input_len": args.input_len, "output_len": args.output_len,
            "policy": policy_label(args)}  # fmt: skip
    write_csv(out_dir / "online.csv", [{**base, **a, **prov} for a in agg])
    write_csv(out_dir / "online_runs.csv",
              [{**base, **{k: v for k, v in r.items() if not k.startswith("_") and
                           k not in ("host_decisions", "errors")}, **prov} for r in rows])  # fmt: skip
    best = {side: {f"{slo:.2f}": online.best_within(agg, side, slo) for slo in slos}
            for side in runs}  # fmt: skip
    (out_dir / "online.json").write_text(json.dumps(
        {"spec": spec, "workload": workload, "runs": runs, "aggregate": agg,
         "best_within_slo": best, "router": args.router_label, **base, **prov}, indent=1))  # fmt: skip
    _print_online(agg, best, slos, args.router_label, prov, list(runs))
    try:
        from lynx_ops.bench.plot import plot_online

        print(f"plot: {plot_online(agg, slos, out_dir, args.router_label)}")
    except ImportError as e:
        print(f"no plot: {e}")
    print(f"results: {out_dir / 'online.csv'}  logs: {work}")
    failed = sum(a["failed"] for a in agg)
    if failed:
        errors = sorted({e for r in rows for e in r.get("errors", [])})[:3]
        print(f"INVALID RUN: {failed} requests failed ({errors}); the load was not what was asked")
        return 1
    return 0


# What the SLOs and the load are declared from; the rest of the spec is filled in by the run.
_WORKLOAD_SPEC = ("points", "repeats", "repeat_at", "input_len", "output_len", "min_prompts",
                  "prompts_per_concurrency", "rate_duration_s", "slo_multipliers", "slo_abs_ms")  # fmt: skip


def _workload(spec: dict, args: argparse.Namespace, serve_args: list[str]) -> dict:
    """What makes two online runs the same workload: the load, the SLO declaration, the model's
    source and router, and the servers' arguments (the stock sides' exactly)."""
    workload = {**{k: spec[k] for k in _WORKLOAD_SPEC}, "source": args.shape or args.model,
                "layers": args.layers, "tiny": getattr(args, "tiny", False),
                "router": args.router_label, "serve_args": serve_args}  # fmt: skip
    return json.loads(json.dumps(workload))  # as it reads back from JSON: tuples become lists


def _load_reuse(path: str, workload: dict, policy: str, spec: dict) -> dict[str, dict]:
    """The earlier run's stock servers (and its Lynx server if it ran `policy`), with its declared
    SLOs copied into `spec`, so one stock pair serves several policies, each run starting only its
    own Lynx server."""
    earlier = read_reuse(path, workload)
    if not earlier["spec"].get("slo_ms") and (spec["slo_multipliers"] or spec["slo_abs_ms"]):
        raise SystemExit(f"--reuse {path}: it declared no TPOT SLOs")
    for key in ("slo_ms", "vllm_goodput_ms"):
        if key in earlier["spec"]:
            spec[key] = earlier["spec"][key]
    Path(spec["slo_file"]).write_text(json.dumps(
        {"slo_ms": spec["slo_ms"], "reused_from": str(path)}, indent=1))  # fmt: skip
    return {label: run for label, run in earlier["runs"].items()
            if label != "lynx" or earlier.get("policy") == policy}  # fmt: skip


def _print_online(agg, best, slos, router, prov, sides) -> None:
    print(f"\nrouter: {router}; {prov['gpu']}, vLLM {prov['vllm']}, lynx_ops {prov['lynx_ops']} "
          f"@ {prov['git_sha']}; vLLM's client (vllm bench serve)")  # fmt: skip
    by = {(a["side"], a["load"], a["value"]): a for a in agg}
    points = sorted({(a["load"], a["value"]) for a in agg})
    print(f"{'load':>14} " + " ".join(f"{s + ' tok/s':>17} {'TPOT p50':>8} {'TTFT p50':>8}"
                                      for s in sides) + f" {'Lynx/stock':>10} {'steps s/l':>11} "
          f"{'remapped':>8} {'experts':>12}")  # fmt: skip
    jit_seen = False
    for load, value in points:
        cells, tput = [], {}
        for side in sides:
            a = by.get((side, load, value))
            if a is None:
                cells.append(f"{'-':>17} {'-':>8} {'-':>8}")
                continue
            tput[side] = a["output_tok_s"]
            spread = (f"{a['output_tok_s']:.0f}" if a["repeats"] == 1 else
                      f"{a['output_tok_s']:.0f}[{a['output_tok_s_min']:.0f}-{a['output_tok_s_max']:.0f}]")  # fmt: skip
            if a.get("runs_with_jit"):
                spread += "*" * a["runs_with_jit"]  # a star per run with a kernel compiled in it
                jit_seen = True
            cells.append(f"{spread:>17} {a['tpot_ms_p50']:>8.2f} {a['ttft_ms_p50']:>8.1f}")
        stock = [tput[s] for s in ("stock", "stock_again") if s in tput]
        ratio = (
            tput.get("lynx", 0) / (sum(stock) / len(stock)) if stock and "lynx" in tput else None
        )
        s_row, l_row = by.get(("stock", load, value)), by.get(("lynx", load, value))
        steps = (f"{s_row['engine_steps']:.0f}/{l_row['engine_steps']:.0f}" if s_row and l_row
                 else "-")  # fmt: skip
        remapped = f"{l_row['remapped_steps']:.0f}" if l_row and l_row["remapped_steps"] else "-"
        experts = (f"{l_row['experts_before']:.1f}->{l_row['experts_after']:.1f}"
                   if l_row and l_row["experts_before"] else "-")  # fmt: skip
        print(f"{load[:4] + ' ' + format(value, 'g'):>14} " + " ".join(cells)
              + f" {('-' if ratio is None else f'{ratio:.2f}x'):>10} {steps:>11} {remapped:>8} "
              f"{experts:>12}")  # fmt: skip
    if jit_seen:
        print(
            "* one per measured run in which vLLM's JIT monitor logged a kernel compiling "
            "(such runs can be far slower; the runs' jit_kernels say which)"
        )
    for slo in slos:
        key = f"{slo:.2f}"
        parts = []
        for side in sides:
            b = best[side][key]
            parts.append(f"{side} {b['output_tok_s']:.0f} tok/s at {b['load']} {b['value']:g}"
                         if b else f"{side} none")  # fmt: skip
        s_b, l_b = best["stock"][key], best["lynx"][key]
        ratio = (
            f"; Lynx/stock {l_b['output_tok_s'] / s_b['output_tok_s']:.2f}x" if s_b and l_b else ""
        )
        print(f"best throughput with p50 TPOT <= {slo:.2f} ms: " + ", ".join(parts) + ratio)
