# SPDX-License-Identifier: Apache-2.0
"""`lynx-bench fidelity`: decode-phase teacher-forced NLL and greedy agreement, stock vs Lynx."""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from lynx_ops.bench.commands.common import checkpoint_or_embedded, parse_engine_args
from lynx_ops.bench.provenance import provenance, write_csv
from lynx_ops.bench.workers import common_prefix, run_worker, scoring_engine

HELP = "decode-phase log-likelihood and greedy agreement"


def add_cli_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", default=None, help="local checkpoint (default: the embedded one)"
    )
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--prompt-len", type=int, default=64)
    parser.add_argument("--forced-len", type=int, default=64)
    parser.add_argument("--greedy-len", type=int, default=32)
    parser.add_argument("--engine-arg", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--out", default="perf/results/lynx-fidelity")


def _prefix_share(a: list[int], b: list[int]) -> float:
    return common_prefix(a, b) / max(len(a), 1)


def main(args: argparse.Namespace) -> int:
    args.model = checkpoint_or_embedded(args.model)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="lynx-fidelity-", dir=out_dir))
    spec = {"model": args.model, "batches": args.batches, "prompt_len": args.prompt_len,
            "forced_len": args.forced_len, "greedy_len": args.greedy_len,
            "engine": scoring_engine({
                "max_model_len": args.prompt_len + max(args.forced_len, args.greedy_len) + 8,
                "max_num_seqs": max(args.batches), **parse_engine_args(args.engine_arg)})}  # fmt: skip
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
