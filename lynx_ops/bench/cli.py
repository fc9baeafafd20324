# SPDX-License-Identifier: Apache-2.0
"""`lynx-bench`: how much faster does an MoE model decode with VLLM_LYNX_ENABLED=1, and why.

    lynx-bench offline --shape qwen3-moe --batches 1 8 16 32 64 --ceiling 32 64 --out perf/results/x

Runs the same workload in separate processes: stock (plugin installed, flag unset), Lynx
(VLLM_LYNX_ENABLED=1) and, with --ceiling K..., the ceiling at K experts (every MoE layer forced onto
K experts in decode steps: the best step time at that expert count). Prints progress while it
runs, a table last, and writes results.json, results.csv (provenance in every row) and plots.

Dummy-weight routers are drawn while the model loads (the `lynx_dummy` load format) from a preset,
the same for all runs: `--router calibrated` (the default: fitted to published statistics of real
routers, per family), `optimistic` (the former default, far more confident than real routers),
`embedded`, a statistics file, or `--spread/--skew`; `--spread none` keeps vLLM's near-uniform dummy
router and marks every row "not a speed-up". Every table and row names the router.
"""

from __future__ import annotations

import argparse
import atexit
import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from lynx_ops.bench import model_configs, router_realism
from lynx_ops.bench.provenance import provenance, write_csv
from lynx_ops.bench.workers import common_prefix, run_worker
from lynx_ops.registry import router_shape


def _engine_kwargs(pairs: list[str]) -> dict[str, Any]:
    out = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        if not key or not _:
            raise SystemExit(f"--engine-arg {pair!r}: expected key=value (value as JSON or text)")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def _model_type(args: argparse.Namespace) -> str | None:
    if args.shape:
        return model_configs.config(args.shape)["model_type"]
    config = Path(args.model) / "config.json"
    return json.loads(config.read_text()).get("model_type") if config.is_file() else None


def _router_args(args: argparse.Namespace, dummy: bool) -> None:
    """Sets args.router (router_realism.Router, or None: no re-draw) and args.router_label, the
    name every table and row states. Router realism is for dummy weights only: a loaded checkpoint
    keeps its trained router."""
    args.router = None
    if not dummy:
        args.router_label = "checkpoint router"
        return
    if args.spread is not None:
        if args.spread.lower() == "none":
            args.router_label = "UNMODIFIED dummy router (near-uniform): not a speed-up"
            return
        args.router = router_realism.Router(float(args.spread), args.skew, "custom")
    else:
        choice = args.router_stats or args.router_preset
        args.router = router_realism.resolve(choice, _model_type(args))
    args.router_label = args.router.describe()


def _add_source_args(parser: argparse.ArgumentParser, cpu_note: str) -> None:
    """--shape/--model and what goes with them: one group for every subcommand."""
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--shape", choices=sorted(model_configs.SHAPES),
                     help="a family at its real layer shapes, dummy weights")  # fmt: skip
    src.add_argument("--model", help="a local checkpoint directory")
    parser.add_argument("--layers", type=int, default=None, help="trim depth (--shape only)")
    parser.add_argument("--tiny", action="store_true", help=f"tiny variant of --shape ({cpu_note})")
    parser.add_argument("--vocab", type=int, default=30000, help="prompt token ids below this")


def _add_policy_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--policy-file", default=None, metavar="FILE",
                        help="the Lynx side runs with this policy file (VLLM_LYNX_CONFIG_FILE; "
                             "docs/MODELS.md), e.g. a setting chosen with lynx-bench frontier")  # fmt: skip


def _lynx_env(args: argparse.Namespace) -> dict[str, str]:
    """The Lynx side's environment; a policy file is checked now, before any engine starts."""
    env = {"VLLM_LYNX_ENABLED": "1"}
    if getattr(args, "policy_file", None):
        from lynx_ops.registry import PolicyError, load_policy_file

        try:
            load_policy_file(args.policy_file)
        except PolicyError as e:
            raise SystemExit(f"--policy-file: {e}") from None
        env["VLLM_LYNX_CONFIG_FILE"] = str(Path(args.policy_file).resolve())
    return env


def _policy_label(args: argparse.Namespace) -> str:
    """What the Lynx side ran with, for every result row."""
    if not getattr(args, "policy_file", None):
        return "family default"
    return json.dumps(json.loads(Path(args.policy_file).read_text())["policies"])


def _add_router_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("router (dummy weights only)")
    g.add_argument("--router", dest="router_preset", default="calibrated", metavar="PRESET",
                   help="gate re-draw preset: calibrated (default; the family's preset fitted to "
                        "published real-router statistics), calibrated-deepseek, optimistic (the "
                        "former default: far more confident than real routers), embedded, or a "
                        "router statistics file")  # fmt: skip
    g.add_argument("--router-stats", metavar="FILE",
                   help="a router statistics file (scripts/export_router_stats.py); same as "
                        "--router FILE")  # fmt: skip
    g.add_argument("--spread", default=None,
                   help="custom logit spread instead of a preset, or 'none' for vLLM's plain "
                        "dummy router (rows marked not a speed-up)")  # fmt: skip
    g.add_argument("--skew", type=float, default=0.0, help="custom expert skew (with --spread)")


def _ceiling_at(ceiling: dict[int, dict[int, float]], batch: int, experts: float):
    """Ceiling TPOT at a (fractional) expert count, linear between measured K; None if outside."""
    points = sorted((k, rows[batch]) for k, rows in ceiling.items() if batch in rows)
    for (k0, t0), (k1, t1) in zip(points, points[1:], strict=False):
        if k0 <= experts <= k1:
            return t0 + (t1 - t0) * (experts - k0) / (k1 - k0)
    for k, t in points:
        if abs(k - experts) < 0.5:
            return t
    return None


def _prepare_model(args: argparse.Namespace, work: Path):
    """(model dir, prompt vocab, num_experts, top_k): a --shape is written as a config dir for dummy
    weights; a --model is used as given (its router shape unknown here)."""
    if not args.shape:
        config = Path(args.model) / "config.json"
        if config.is_file():  # prompt ids must exist in the checkpoint's vocabulary
            cfg = json.loads(config.read_text())
            return (
                args.model,
                min(args.vocab, int(cfg.get("vocab_size", args.vocab))),
                *router_shape(cfg),
            )
        return args.model, args.vocab, None, None
    cfg = model_configs.config(args.shape, args.layers, tiny=args.tiny)
    model = model_configs.write_model_dir(args.shape, work / "model", args.layers, tiny=args.tiny)
    num_experts, top_k = router_shape(cfg)
    return str(model), cfg["vocab_size"], num_experts, top_k


def offline(args: argparse.Namespace) -> int:
    _router_args(args, dummy=args.load_format == "dummy")
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="lynx-bench-", dir=out_dir))
    model, vocab, num_experts, top_k = _prepare_model(args, work)
    spec = {
        "model": model, "load_format": args.load_format, "batches": args.batches,
        "input_len": args.input_len, "output_len": args.output_len, "repeats": args.repeats,
        "spread": args.router.spread if args.router else None,
        "skew": args.router.skew if args.router else 0.0,
        "router_name": args.router.name if args.router else None, "vocab": vocab,
        "engine": {"max_model_len": args.input_len + args.output_len + 16,
                   "max_num_seqs": max(args.batches), **_engine_kwargs(args.engine_arg)},
    }  # fmt: skip
    if args.lora_adapters:
        spec["lora"] = _lora_spec(model, args.lora_adapters, args.lora_rank)
        spec["engine"].update(enable_lora=True, max_loras=args.lora_adapters,
                              max_lora_rank=args.lora_rank)  # fmt: skip
    router, policy = args.router_label, _policy_label(args)
    workload = json.loads(json.dumps(_comparable(spec, args)))  # as it reads back from JSON
    reused = _load_reuse(args.reuse, workload) if args.reuse else {}

    def run(label: str, env_extra: dict[str, str]) -> dict:
        if label in reused:
            print(f"[{label}] reused from {args.reuse}", flush=True)
            return reused[label]
        return run_worker(label, spec, env_extra, work)

    runs = {"stock": run("stock", {}), "lynx": run("lynx", _lynx_env(args))}
    if args.stock_again:
        # Stock, Lynx, stock: the two stock engines bracket Lynx, so their mean cancels a linear
        # drift of the machine and their difference is the run's noise floor.
        runs["stock_again"] = run("stock_again", {})
    ceiling: dict[int, dict[int, float]] = {}
    for k in args.ceiling:
        res = run(f"ceiling{k}", {"VLLM_LYNX_ENABLED": "1", "VLLM_LYNX_CEILING_EXPERTS": str(k)})
        runs[f"ceiling{k}"] = res
        ceiling[k] = {r["batch"]: r["tpot_ms_median"] for r in res["rows"]
                      if r["tpot_ms_median"] is not None}  # fmt: skip

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
        ceil = _ceiling_at(ceiling, b, after) if after is not None else None
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


def _load_reuse(path: str, workload: dict) -> dict[str, dict]:
    """Runs from an earlier results.json of the same workload, so one comparison can span calls
    (a GPU call is capped at 10 minutes; seven 48-layer engines do not fit one)."""
    try:
        earlier = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise SystemExit(f"--reuse {path}: cannot read it ({e})") from e
    if earlier.get("workload") != workload:
        raise SystemExit(f"--reuse {path}: recorded for a different workload "
                         f"({earlier.get('workload')} vs {workload})")  # fmt: skip
    return earlier["runs"]


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


def _prefix_share(a: list[int], b: list[int]) -> float:
    return common_prefix(a, b) / max(len(a), 1)


def fidelity(args: argparse.Namespace) -> int:
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="lynx-fidelity-", dir=out_dir))
    spec = {"model": args.model, "batches": args.batches, "prompt_len": args.prompt_len,
            "forced_len": args.forced_len, "greedy_len": args.greedy_len,
            "engine": {"max_model_len": args.prompt_len + max(args.forced_len, args.greedy_len) + 8,
                       "max_num_seqs": max(args.batches), **_engine_kwargs(args.engine_arg)}}  # fmt: skip
    module = "lynx_ops.bench.fidelity"
    stock = run_worker("stock", spec, {}, work, module)
    lynx = run_worker("lynx", spec, {"VLLM_LYNX_ENABLED": "1"}, work, module)
    prov = provenance()
    rows = []
    for s, lx in zip(stock["rows"], lynx["rows"], strict=True):
        pairs = list(zip(s["greedy"], lx["greedy"], strict=True))
        rows.append({
            "model": args.model, "batch": s["batch"], "tokens_scored": s["tokens_scored"],
            "forced_followed": s["forced_tokens_followed"] and lx["forced_tokens_followed"],
            "stock_nll_per_token": s["nll_per_token"], "lynx_nll_per_token": lx["nll_per_token"],
            "delta_nll_per_token": lx["nll_per_token"] - s["nll_per_token"],
            "stock_ppl": s["perplexity"], "lynx_ppl": lx["perplexity"],
            "greedy_identical_share": sum(a == b for a, b in pairs) / len(pairs),
            "greedy_common_prefix_share": sum(_prefix_share(a, b) for a, b in pairs) / len(pairs),
            "experts_before": lx["experts_before"], "experts_after": lx["experts_after"],
            "top1_kept_share": lx.get("top1_kept"), **prov,
        })  # fmt: skip
    (out_dir / "fidelity.json").write_text(json.dumps({"stock": stock, "lynx": lynx,
                                                       "rows": rows}, indent=1))  # fmt: skip
    write_csv(out_dir / "fidelity.csv", rows)
    print(f"\n{args.model}: decode-phase teacher-forced NLL per token, stock vs Lynx")
    print(f"{'B':>4} {'stock nll':>9} {'lynx nll':>9} {'delta':>8} {'greedy same':>11} "
          f"{'prefix':>6} {'experts before->after':>22} {'top-1 kept':>10}")  # fmt: skip
    for r in rows:
        ex = (f"{r['experts_before']:.1f} -> {r['experts_after']:.1f}"
              if r["experts_before"] is not None else "-")  # fmt: skip
        top1 = "-" if r["top1_kept_share"] is None else f"{r['top1_kept_share']:.3f}"
        print(f"{r['batch']:>4} {r['stock_nll_per_token']:>9.4f} {r['lynx_nll_per_token']:>9.4f} "
              f"{r['delta_nll_per_token']:>+8.4f} {r['greedy_identical_share']:>11.2f} "
              f"{r['greedy_common_prefix_share']:>6.2f} {ex:>22} {top1:>10}")  # fmt: skip
    print(f"results: {out_dir / 'fidelity.csv'}")
    return 0


def _serve_setup(args: argparse.Namespace, prefix: str, max_tokens: int):
    """What every `vllm serve` workload needs: output and work dirs, the model (a --shape written
    as a dummy-weight config dir with a word-level tokenizer over its vocabulary), prompt
    vocabulary and serve arguments (router realism through the lynx_dummy load format)."""
    from lynx_ops.bench.online import router_serve_args

    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=prefix, dir=out_dir))
    _router_args(args, dummy=bool(args.shape))
    serve_args = [f"--max-model-len={max_tokens + 16}", *args.serve_arg]
    model, vocab, _, _ = _prepare_model(args, work)
    if args.shape:
        cfg = json.loads((Path(model) / "config.json").read_text())
        model_configs.write_tokenizer(model, int(cfg["vocab_size"]))
        serve_args += (router_serve_args(args.router.loader_config()) if args.router
                       else ["--load-format=dummy"])  # fmt: skip
    return out_dir, work, model, vocab, serve_args


def soak_cmd(args: argparse.Namespace) -> int:
    """Flag off, then on, each under the same mixed traffic; fails (exit 1) on any error, invalid
    response, dead server, or resident memory growing by more than 5% after warm-up."""
    from lynx_ops.bench import soak

    out_dir, work, model, vocab, serve_args = _serve_setup(
        args, "lynx-soak-", args.max_input + args.max_output
    )
    spec = {"minutes": args.minutes, "concurrency": args.concurrency, "vocab": vocab,
            "max_input": args.max_input, "max_output": args.max_output, "sample_s": 10.0}  # fmt: skip
    runs = {"off": soak.run_mode("off", model, serve_args, {}, spec, work),
            "on": soak.run_mode("on", model, serve_args, {"VLLM_LYNX_ENABLED": "1"}, spec, work)}  # fmt: skip
    prov = provenance()
    (out_dir / "soak.json").write_text(json.dumps({"spec": spec, "runs": runs, "model": args.shape
                                                   or args.model, "router": args.router_label,
                                                   **prov}, indent=1))  # fmt: skip
    print(f"\nrouter: {args.router_label}")
    print(f"{'mode':>4} {'requests':>8} {'valid':>6} {'errors':>6} {'tokens':>7} "
          f"{'RSS after warm-up':>17} {'RSS end':>8} {'growth':>7}")  # fmt: skip
    failed = []
    for mode, r in runs.items():
        grow = r["rss_growth_after_warmup_mib"]
        print(f"{mode:>4} {r['requests']:>8} {r['valid']:>6} {r['errors']:>6} {r['tokens']:>7} "
              f"{r['rss_mib_after_warmup']:>13.0f} MiB {r['rss_mib_end']:>4.0f} MiB {grow:>+6.0f}")  # fmt: skip
        if r["errors"] or r["valid"] != r["requests"] or not r["server_alive"]:
            failed.append(f"{mode}: {r['errors']} errors, {r['valid']}/{r['requests']} valid, "
                          f"server alive: {r['server_alive']}; first: {r['first_errors']}")  # fmt: skip
        if grow > 0.05 * r["rss_mib_after_warmup"]:
            failed.append(f"{mode}: resident memory grew {grow:.0f} MiB after warm-up")
    print(f"results: {out_dir / 'soak.json'}  logs: {work}")
    for line in failed:
        print(f"SOAK FAILED: {line}")
    return 1 if failed else 0


def online_cmd(args: argparse.Namespace) -> int:
    from lynx_ops.bench import online

    out_dir, work, model, _, serve_args = _serve_setup(
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
    sides = [("stock", {}), ("lynx", _lynx_env(args))]
    if args.stock_again:
        sides.append(("stock_again", {}))
    runs = {}
    for label, env in sides:
        side_dir = work / label
        side_dir.mkdir()
        runs[label] = online.run_side(label, model, serve_args, env, spec, side_dir,
                                      log=lambda m: print(m, flush=True))  # fmt: skip
    slos = spec["slo_ms"]
    rows = [r for res in runs.values() for r in res["rows"]]
    agg = online.aggregate(rows, slos)
    prov = provenance()
    base = {"model": args.shape or args.model, "layers": args.layers, "router": args.router_label,
            "input_len": args.input_len, "output_len": args.output_len,
            "policy": _policy_label(args)}  # fmt: skip
    write_csv(out_dir / "online.csv", [{**base, **a, **prov} for a in agg])
    write_csv(out_dir / "online_runs.csv",
              [{**base, **{k: v for k, v in r.items() if not k.startswith("_") and
                           k not in ("host_decisions", "errors")}, **prov} for r in rows])  # fmt: skip
    best = {side: {f"{slo:.2f}": online.best_within(agg, side, slo) for slo in slos}
            for side in runs}  # fmt: skip
    (out_dir / "online.json").write_text(json.dumps(
        {"spec": spec, "runs": runs, "aggregate": agg, "best_within_slo": best,
         "router": args.router_label, **base, **prov}, indent=1))  # fmt: skip
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


def _print_online(agg, best, slos, router, prov, sides) -> None:
    print(f"\nrouter: {router}; {prov['gpu']}, vLLM {prov['vllm']}, lynx_ops {prov['lynx_ops']} "
          f"@ {prov['git_sha']}; vLLM's client (vllm bench serve)")  # fmt: skip
    by = {(a["side"], a["load"], a["value"]): a for a in agg}
    points = sorted({(a["load"], a["value"]) for a in agg})
    print(f"{'load':>14} " + " ".join(f"{s + ' tok/s':>17} {'TPOT p50':>8} {'TTFT p50':>8}"
                                      for s in sides) + f" {'Lynx/stock':>10} {'steps s/l':>11} "
          f"{'remapped':>8} {'experts':>12}")  # fmt: skip
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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="lynx-bench", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    off = sub.add_parser("offline", help="fixed decode batches, stock vs Lynx (vs ceiling)")
    _add_source_args(off, "smoke tests on CPU; not a performance number")
    _add_router_args(off)
    _add_policy_arg(off)
    off.add_argument("--load-format", default="dummy")
    off.add_argument("--batches", type=int, nargs="+", default=[1, 8, 16, 32, 64, 128])
    off.add_argument("--input-len", type=int, default=128)
    off.add_argument("--output-len", type=int, default=128)
    off.add_argument("--repeats", type=int, default=3)
    off.add_argument("--ceiling", type=int, nargs="*", default=[], help="expert counts K")
    off.add_argument("--stock-again", action=argparse.BooleanOptionalAction, default=True,
                     help="run stock a second time after Lynx (stock, Lynx, stock): the stock "
                          "reference is their mean and their difference the noise floor")  # fmt: skip
    off.add_argument("--lora-adapters", type=int, default=0, metavar="N",
                     help="serve N random-weight expert LoRA adapters (written locally), requests "
                          "round-robin over them; same adapters for stock and Lynx")  # fmt: skip
    off.add_argument("--lora-rank", type=int, default=16)
    off.add_argument("--engine-arg", action="append", default=[], metavar="KEY=VALUE",
                     help="extra LLM(...) argument, e.g. enforce_eager=true")  # fmt: skip
    off.add_argument("--reuse", metavar="RESULTS_JSON",
                     help="take runs already in an earlier results.json of the same workload "
                          "(same flags) instead of running them again")  # fmt: skip
    off.add_argument("--out", default="perf/results/lynx-bench")
    fid = sub.add_parser("fidelity", help="decode-phase log-likelihood and greedy agreement")
    fid.add_argument("--model", default=None, help="local checkpoint (default: the embedded one)")
    fid.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    fid.add_argument("--prompt-len", type=int, default=64)
    fid.add_argument("--forced-len", type=int, default=64)
    fid.add_argument("--greedy-len", type=int, default=32)
    fid.add_argument("--engine-arg", action="append", default=[], metavar="KEY=VALUE")
    fid.add_argument("--out", default="perf/results/lynx-fidelity")
    fr = sub.add_parser("frontier", help="experts vs decode NLL for a grid of policy settings")
    fr.add_argument("--model", default=None, help="local checkpoint (default: the embedded one)")
    fr.add_argument("--setting", action="append", default=[], metavar="KIND:key=value,...",
                    help="a policy setting, e.g. bins:alpha=3,beta=2, budget:fraction=0.5, "
                         "keep_k0:k0=2 (repeat; default: a grid over the three kinds)")  # fmt: skip
    fr.add_argument("--batches", type=int, nargs="+", default=[8, 16, 32])
    fr.add_argument("--window-sets", type=int, default=2,
                    help="disjoint sets of held-out windows; the NLL change is paired per set")  # fmt: skip
    fr.add_argument("--prompt-len", type=int, default=64)
    fr.add_argument("--forced-len", type=int, default=64)
    fr.add_argument("--engine-arg", action="append", default=[], metavar="KEY=VALUE")
    fr.add_argument("--out", default="perf/results/lynx-frontier")
    onl = sub.add_parser("online", help="vllm serve, stock vs Lynx, driven by vllm bench serve")
    _add_source_args(onl, "CPU smoke tests only")
    _add_router_args(onl)
    _add_policy_arg(onl)
    onl.add_argument("--concurrency", type=int, nargs="*", default=[1, 8, 16, 32, 64, 128],
                     help="closed-loop points: at most C requests in flight")  # fmt: skip
    onl.add_argument("--request-rates", type=float, nargs="*", default=[],
                     help="open-loop points: Poisson arrivals at these requests/s")  # fmt: skip
    onl.add_argument("--repeats", type=int, default=3, help="runs at each --repeat-at point")
    onl.add_argument("--repeat-at", type=float, nargs="*", default=[32, 64, 128],
                     help="load points (concurrency or rate) that get --repeats runs; others 1")  # fmt: skip
    onl.add_argument("--input-len", type=int, default=512)
    onl.add_argument("--output-len", type=int, default=256)
    onl.add_argument("--prompts-per-concurrency", type=float, default=4.0,
                     help="requests per closed-loop run, as a multiple of C")  # fmt: skip
    onl.add_argument("--min-prompts", type=int, default=8)
    onl.add_argument("--rate-duration", type=float, default=30.0,
                     help="seconds of arrivals per open-loop run")  # fmt: skip
    onl.add_argument("--slo-multipliers", type=float, nargs="*", default=[2.0, 3.0, 4.0],
                     help="TPOT SLOs as multiples of stock's median TPOT at concurrency 1")  # fmt: skip
    onl.add_argument("--slo-ms", type=float, nargs="*", default=[], help="TPOT SLOs in ms")
    onl.add_argument("--stock-again", action=argparse.BooleanOptionalAction, default=True,
                     help="a second stock server after Lynx (stock, Lynx, stock)")  # fmt: skip
    onl.add_argument("--serve-arg", action="append", default=[], metavar="--flag=value")
    onl.add_argument("--out", default="perf/results/lynx-online")
    soak = sub.add_parser("soak", help="vllm serve under mixed traffic, flag off then on")
    _add_source_args(soak, "CPU runs")
    _add_router_args(soak)
    soak.add_argument("--minutes", type=float, default=10.0, help="traffic per mode")
    soak.add_argument("--concurrency", type=int, default=8, help="clients, one request each")
    soak.add_argument("--max-input", type=int, default=256)
    soak.add_argument("--max-output", type=int, default=64)
    soak.add_argument("--serve-arg", action="append", default=[], metavar="--flag=value")
    soak.add_argument("--out", default="perf/results/lynx-soak")
    args = ap.parse_args(argv)
    if args.cmd == "offline":
        return offline(args)
    if args.cmd == "online":
        return online_cmd(args)
    if args.cmd == "soak":
        return soak_cmd(args)
    if args.model is None:
        from lynx_ops import embedded

        if not embedded.available():
            raise SystemExit("no --model given and the embedded model is not trained yet "
                             "(scripts/train_embedded_model.py)")  # fmt: skip
        args.model = str(embedded.MODEL_DIR)
    if args.cmd == "frontier":
        from lynx_ops.bench import frontier

        return frontier.run(args.model, args.setting, args.batches, args.window_sets,
                            args.prompt_len, args.forced_len, _engine_kwargs(args.engine_arg),
                            Path(args.out))  # fmt: skip
    return fidelity(args)


if __name__ == "__main__":
    sys.exit(main())
