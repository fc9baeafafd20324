# SPDX-License-Identifier: Apache-2.0
"""`lynx-bench soak`: `vllm serve` under mixed traffic, flag off then on (bench/soak.py)."""

from __future__ import annotations

import argparse
import json

from lynx_ops.bench.commands.common import add_router_args, add_source_args, serve_setup
from lynx_ops.bench.provenance import provenance

HELP = "vllm serve under mixed traffic, flag off then on"


def add_cli_args(parser: argparse.ArgumentParser) -> None:
    add_source_args(parser, "CPU runs")
    add_router_args(parser)
    parser.add_argument("--minutes", type=float, default=10.0, help="traffic with the flag on")
    parser.add_argument("--off-minutes", type=float, default=None,
                        help="traffic with the flag off, the stock comparison (default: --minutes; "
                             "shorter fits a GPU session's time)")  # fmt: skip
    parser.add_argument("--on-first", action="store_true",
                        help="run the flag-on side first, so that a run cut short (a GPU session's "
                             "time) still leaves the whole Lynx side")  # fmt: skip
    parser.add_argument("--concurrency", type=int, default=8, help="clients, one request each")
    parser.add_argument("--abuse", type=int, default=1,
                        help="clients cutting streams and sending malformed requests")  # fmt: skip
    parser.add_argument("--bench-serve", action=argparse.BooleanOptionalAction, default=True,
                        help="vLLM's client (vllm bench serve) cycling through load points "
                             "meanwhile; each run must finish with no failed request")  # fmt: skip
    parser.add_argument("--max-input", type=int, default=256)
    parser.add_argument("--max-output", type=int, default=64)
    parser.add_argument("--serve-arg", action="append", default=[], metavar="--flag=value")
    parser.add_argument("--out", default="perf/results/lynx-soak")


def main(args: argparse.Namespace) -> int:
    """Flag off, then on (or on first), each under the same mixed traffic (the off side may run
    shorter); fails (exit 1) on any error, invalid response, dead server, or resident memory
    growing by more than 5% after warm-up."""
    from lynx_ops.bench import soak

    off_minutes = args.minutes if args.off_minutes is None else args.off_minutes
    if not (off_minutes > 0 and args.minutes > 0):  # also refuses nan
        raise SystemExit(f"lynx-bench soak: --minutes and --off-minutes must be > 0, got "
                         f"{args.minutes} and {off_minutes}")  # fmt: skip
    out_dir, work, model, vocab, serve_args = serve_setup(
        args, "lynx-soak-", args.max_input + args.max_output
    )
    spec = {"minutes": args.minutes, "off_minutes": off_minutes, "concurrency": args.concurrency,
            "abuse": args.abuse, "bench_serve": args.bench_serve,
            "vocab": vocab, "max_input": args.max_input, "max_output": args.max_output,
            "max_model_len": args.max_input + args.max_output + 16, "sample_s": 10.0}  # fmt: skip
    prov = provenance()
    runs: dict = {}

    def save() -> None:  # after each mode, so a run cut short still leaves what finished
        (out_dir / "soak.json").write_text(json.dumps(
            {"spec": spec, "runs": runs, "model": args.shape or args.model,
             "router": args.router_label, **prov}, indent=1))  # fmt: skip

    modes = {
        "off": lambda: soak.run_mode(
            "off", model, serve_args, {}, {**spec, "minutes": off_minutes}, work
        ),
        "on": lambda: soak.run_mode(
            "on", model, serve_args, {"VLLM_LYNX_ENABLED": "1"}, spec, work
        ),
    }
    spec["order"] = ["on", "off"] if args.on_first else ["off", "on"]
    for mode in spec["order"]:
        runs[mode] = modes[mode]()
        save()
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
        b = r["bench_serve"]
        print(f"{mode:>4} vllm bench serve: {b['runs']} runs, {b['completed']} requests completed, "
              f"{len(b['failed_runs'])} runs with failures")  # fmt: skip
        if b["failed_runs"]:
            failed.append(f"{mode}: vllm bench serve runs failed: {b['failed_runs'][:3]}")
        a = r["abuse"]
        print(f"{mode:>4} abuse: {a['cut']} cut streams ({a['cut_after_chunks']} after 2 chunks), "
              f"{a['refused_4xx']}/{a['malformed']} malformed refused with a 4xx, "
              f"{a['server_errors']} server errors; vLLM counted {r['vllm_counts']}; GPU "
              f"{r['gpu_mib_after_warmup']} MiB after warm-up, growth {r['gpu_growth_after_warmup_mib']}")  # fmt: skip
        if a["server_errors"] or a["refused_4xx"] != a["malformed"]:
            failed.append(f"{mode}: abuse client: {a['server_errors']} server errors, "
                          f"{a['refused_4xx']}/{a['malformed']} refused; first: "
                          f"{a['first_server_errors']}")  # fmt: skip
        if not r["metrics_consistent"]:
            failed.append(f"{mode}: vLLM's /metrics counted {r['vllm_counts']} for "
                          f"{r['valid']} valid responses, {r['tokens']} tokens")  # fmt: skip
        if grow > 0.05 * r["rss_mib_after_warmup"]:
            failed.append(f"{mode}: resident memory grew {grow:.0f} MiB after warm-up")
        gpu_grow = r["gpu_growth_after_warmup_mib"]
        if gpu_grow is not None and gpu_grow > 0.02 * r["gpu_mib_after_warmup"]:
            failed.append(f"{mode}: GPU memory grew {gpu_grow:.0f} MiB after warm-up")
    print(f"results: {out_dir / 'soak.json'}  logs: {work}")
    for line in failed:
        print(f"SOAK FAILED: {line}")
    return 1 if failed else 0
