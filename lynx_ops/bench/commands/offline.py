# SPDX-License-Identifier: Apache-2.0
"""`lynx-bench offline`: fixed decode batches, stock vs Lynx (vs the ceiling), in separate processes.

Stock (plugin installed, flag unset), Lynx (VLLM_LYNX_ENABLED=1), stock again, and with --ceiling
K... the ceiling at K experts (every MoE layer forced onto K experts in decode steps: the best step
time at that expert count). Prints progress, a table last, and writes results.json, results.csv
(provenance in every row) and plots.
"""

from __future__ import annotations

import argparse
import atexit
import json
import shutil
import tempfile
from pathlib import Path

from lynx_ops.bench import router_realism
from lynx_ops.bench.commands.common import (
    add_policy_arg,
    add_router_args,
    add_source_args,
    lynx_env,
    parse_engine_args,
    policy_label,
    prepare_model,
    read_reuse,
    resolve_router,
)
from lynx_ops.bench.provenance import provenance, write_csv
from lynx_ops.bench.workers import run_worker

HELP = "fixed decode batches, stock vs Lynx (vs ceiling)"


def add_cli_args(parser: argparse.ArgumentParser) -> None:
    add_source_args(parser, "smoke tests on CPU; not a performance number")
    add_router_args(parser)
    add_policy_arg(parser)
    parser.add_argument("--load-format", default="dummy")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 16, 32, 64, 128])
    parser.add_argument("--input-len", type=int, default=128)
    parser.add_argument("--output-len", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--ceiling", type=int, nargs="*", default=[], help="expert counts K")
    parser.add_argument("--stock-again", action=argparse.BooleanOptionalAction, default=True,
                        help="run stock a second time after Lynx (stock, Lynx, stock): the stock "
                             "reference is their mean and their difference the noise floor")  # fmt: skip
    parser.add_argument("--lora-adapters", type=int, default=0, metavar="N",
                        help="serve N random-weight expert LoRA adapters (written locally), requests "
                             "round-robin over them; same adapters for stock and Lynx")  # fmt: skip
    parser.add_argument("--lora-rank", type=int, default=16)
    parser.add_argument("--engine-arg", action="append", default=[], metavar="KEY=VALUE",
                        help="extra LLM(...) argument, e.g. enforce_eager=true")  # fmt: skip
    parser.add_argument("--reuse", metavar="RESULTS_JSON",
                        help="take runs already in an earlier results.json of the same workload "
                             "(same flags) instead of running them again; its Lynx run only "
                             "when it ran the same --policy-file")  # fmt: skip
    parser.add_argument("--out", default="perf/results/lynx-bench")


def main(args: argparse.Namespace) -> int:
    resolve_router(args, dummy=args.load_format == "dummy")
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="lynx-bench-", dir=out_dir))
    model, vocab, num_experts, top_k = prepare_model(args, work)
    spec = {
        "model": model, "load_format": args.load_format, "batches": args.batches,
        "input_len": args.input_len, "output_len": args.output_len, "repeats": args.repeats,
        "spread": args.router.spread if args.router else None,
        "skew": args.router.skew if args.router else 0.0,
        "router_name": args.router.name if args.router else None, "vocab": vocab,
        "engine": {"max_model_len": args.input_len + args.output_len + 16,
                   "max_num_seqs": max(args.batches), **parse_engine_args(args.engine_arg)},
    }  # fmt: skip
    if args.lora_adapters:
        spec["lora"] = _lora_spec(model, args.lora_adapters, args.lora_rank)
        spec["engine"].update(enable_lora=True, max_loras=args.lora_adapters,
                              max_lora_rank=args.lora_rank)  # fmt: skip
    router, policy = args.router_label, policy_label(args)
    workload = json.loads(json.dumps(_comparable(spec, args)))  # as it reads back from JSON
    reused = _reusable(read_reuse(args.reuse, workload)["runs"], policy) if args.reuse else {}

    def run(label: str, env_extra: dict[str, str]) -> dict:
        if label in reused:
            print(f"[{label}] reused from {args.reuse}", flush=True)
            return reused[label]
        return run_worker(label, spec, env_extra, work)

    runs = {"stock": run("stock", {}), "lynx": {**run("lynx", lynx_env(args)), "policy": policy}}
    if args.stock_again:
        # Stock, Lynx, stock: the two stock engines bracket Lynx, so their mean cancels a linear
        # drift of the machine and their difference is the run's noise floor.
        runs["stock_again"] = run("stock_again", {})
    ceiling: dict[int, dict[int, float]] = {}
    ceiling_experts: dict[int, dict[int, float]] = {}  # what each ceiling's steps touched
    for k in args.ceiling:
        res = run(f"ceiling{k}", {"VLLM_LYNX_ENABLED": "1", "VLLM_LYNX_CEILING_EXPERTS": str(k)})
        runs[f"ceiling{k}"] = res
        ceiling[k] = {r["batch"]: r["tpot_ms_median"] for r in res["rows"]
                      if r["tpot_ms_median"] is not None}  # fmt: skip
        ceiling_experts[k] = {r["batch"]: r["experts_after"] for r in res["rows"]
                              if r.get("experts_after") is not None}  # fmt: skip

    prov = provenance()
    rows = []
    again_rows = (
        runs["stock_again"]["rows"] if "stock_again" in runs else [None] * len(args.batches)
    )
    for stock, lynx, again in zip(runs["stock"]["rows"], runs["lynx"]["rows"], again_rows,
                                  strict=True):  # fmt: skip
        b = stock["batch"]
        row = {"model": args.shape or args.model, "layers": args.layers, "batch": b,
               "input_len": args.input_len, "output_len": args.output_len, "router": router,
               "policy": policy}  # fmt: skip
        for side, r in (("stock", stock), ("lynx", lynx), ("stock_again", again)):
            for key, value in (r or {}).items():
                if key not in ("batch", "input_len", "output_len", "repeats"):
                    row[f"{side}_{key}"] = value
        base = _stock_mean(stock, again)
        row["stock_tpot_ms_reference"] = base
        if again and stock["tpot_ms_median"] and again["tpot_ms_median"]:
            a, c = stock["tpot_ms_median"], again["tpot_ms_median"]
            row["stock_noise_pct"] = 100 * abs(a - c) / ((a + c) / 2)
        lynx_tpot = lynx["tpot_ms_median"]
        row["speedup_tpot"] = base / lynx_tpot if base and lynx_tpot else None
        step = _stock_mean(stock, again, "ms_per_spec_step")
        if step and lynx.get("ms_per_spec_step"):
            # Speculative decoding: the step-time ratio, free of the two sides' acceptance.
            row["speedup_per_spec_step"] = step / lynx["ms_per_spec_step"]
        if num_experts:
            row["experts_uniform_expected"] = router_realism.expected_union(num_experts, top_k, b)
        after = lynx.get("experts_after")
        ceil = _ceiling_at(ceiling, b, after, ceiling_experts) if after is not None else None
        if ceil is not None and lynx_tpot:
            row["ceiling_tpot_ms_at_lynx_experts"] = ceil
            row["mechanism_efficiency"] = ceil / lynx_tpot
        rows.append({**row, **prov})
    (out_dir / "results.json").write_text(
        json.dumps({"workload": workload, "runs": runs, "rows": rows}, indent=1)
    )
    write_csv(out_dir / "results.csv", rows)
    _print_table(rows, router, prov)
    try:
        from lynx_ops.bench.plot import plot_offline

        for path in plot_offline(rows, ceiling, out_dir):
            print(f"plot: {path}")
    except ImportError:
        pass
    print(f"results: {out_dir / 'results.csv'}  logs: {work}")
    return 0


def _ceiling_at(
    ceiling: dict[int, dict[int, float]],
    batch: int,
    experts: float,
    counts: dict[int, dict[int, float]] | None = None,
):
    """Ceiling TPOT at a (fractional) expert count, linear between the ceilings run; None if
    outside. A ceiling's point sits at the experts its steps touched (`counts`, the engine's
    counters) where known, else at K: a small batch does not fill K (8 rows of k = 4 on K = 40
    touch about 23), and placing that step time at 40 would understate the ceiling there."""
    counts = counts or {}
    points = sorted((counts.get(k, {}).get(batch, k), rows[batch])
                    for k, rows in ceiling.items() if batch in rows)  # fmt: skip
    for (k0, t0), (k1, t1) in zip(points, points[1:], strict=False):
        if k0 <= experts <= k1:
            return t0 + (t1 - t0) * (experts - k0) / (k1 - k0)
    for k, t in points:
        if abs(k - experts) < 0.5:
            return t
    return None


def _lora_spec(model: str, count: int, rank: int) -> dict:
    """Write the adapters once, before any engine, so stock and Lynx serve the same ones."""
    from lynx_ops.bench.lora_adapters import write_adapters

    # Outside --out (GBs at real shapes, and not a result); removed when the process exits.
    lora_dir = Path(tempfile.mkdtemp(prefix="lynx-lora-"))
    atexit.register(shutil.rmtree, lora_dir, ignore_errors=True)
    try:
        paths = write_adapters(model, lora_dir, count, rank)
    except (ValueError, FileNotFoundError) as e:
        raise SystemExit(f"--lora-adapters: {e}") from e
    print(f"wrote {count} random expert LoRA adapters (rank {rank}) under {lora_dir}",
          flush=True)  # fmt: skip
    return {"paths": [str(p) for p in paths], "rank": rank}


def _comparable(spec: dict, args: argparse.Namespace) -> dict:
    """What makes two offline runs the same workload: the spec without its model directory (a
    fresh temporary path each time) plus where the model came from."""
    return {**{k: v for k, v in spec.items() if k not in ("model", "lora")},
            "lora": {"adapters": args.lora_adapters, "rank": args.lora_rank},
            "source": args.shape or args.model, "layers": args.layers, "tiny": args.tiny}  # fmt: skip


def _reusable(runs: dict[str, dict], policy: str) -> dict[str, dict]:
    """The earlier runs this one may take over: all of them, except a Lynx run made with another
    policy (or recorded before runs named their policy), so that one set of stock and ceiling
    engines serves several policies, each call starting only its own Lynx engine."""
    return {label: run for label, run in runs.items()
            if label != "lynx" or run.get("policy") == policy}  # fmt: skip


def _stock_mean(stock: dict, again: dict | None, key: str = "tpot_ms_median") -> float | None:
    """The stock reference (TPOT by default): the mean of the bracketing stock runs that have it."""
    values = [r[key] for r in (stock, again) if r and r.get(key)]
    return sum(values) / len(values) if values else None


def _num(value: float | None, spec: str, absent: str = "invalid") -> str:
    """A table cell; `absent` where there is no value (an invalid run, or '-' for no NVML)."""
    return absent if value is None else format(value, spec)


def _print_table(rows: list[dict], router: str, prov: dict) -> None:
    print(f"\nrouter: {router}; {prov['gpu']}, vLLM {prov['vllm']}, lynx_ops {prov['lynx_ops']} "
          f"@ {prov['git_sha']}")  # fmt: skip
    if rows and rows[0].get("policy", "family default") != "family default":
        print(f"Lynx policy file: {rows[0]['policy']}")
    head = (f"{'B':>4} {'stock TPOT ms':>13} {'noise %':>7} {'Lynx TPOT ms':>12} {'speed-up':>8} "
            f"{'experts before->after':>22} {'ceiling ms':>10} {'efficiency':>10} "
            f"{'mem-bw % s/L':>12}")  # fmt: skip
    print(head)
    for r in rows:
        # No expert counts: no step remapped (a batch of one row skips the op, the identity there).
        before, after = r.get("lynx_experts_before"), r.get("lynx_experts_after")
        experts = "- (no remap)" if before is None else f"{before:.1f} -> {after:.1f}"
        ceil = r.get("ceiling_tpot_ms_at_lynx_experts")
        eff = r.get("mechanism_efficiency")
        bw = (f"{_num(r.get('stock_mem_bw_util_pct'), '.0f', '-')}/"
              f"{_num(r.get('lynx_mem_bw_util_pct'), '.0f', '-')}")  # fmt: skip
        noise = r.get("stock_noise_pct")
        speedup = r["speedup_tpot"]
        print(f"{r['batch']:>4} {_num(r['stock_tpot_ms_reference'], '.3f'):>13} "
              f"{('-' if noise is None else f'{noise:.1f}'):>7} "
              f"{_num(r['lynx_tpot_ms_median'], '.3f'):>12} "
              f"{('-' if speedup is None else f'{speedup:.2f}x'):>8} {experts:>22} "
              f"{(f'{ceil:.3f}' if ceil else '-'):>10} {(f'{eff:.2f}' if eff else '-'):>10} {bw:>12}")  # fmt: skip
    for r in rows:
        if r.get("stock_spec_tokens_per_step") or r.get("lynx_spec_tokens_per_step"):
            step = r.get("speedup_per_spec_step")
            print(f"B={r['batch']}: speculative decoding, tokens per step stock "
                  f"{_num(r.get('stock_spec_tokens_per_step'), '.2f', '-')} / Lynx "
                  f"{_num(r.get('lynx_spec_tokens_per_step'), '.2f', '-')}; speed-up per step (stock/Lynx "
                  f"time per step) {'-' if step is None else f'{step:.2f}x'}")  # fmt: skip
