# SPDX-License-Identifier: Apache-2.0
"""`lynx-bench choose`: a policy file from a frontier.csv by one stated rule (bench/choose.py)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

HELP = "a policy file from a frontier: fewest experts within an NLL limit, per batch size"


def add_cli_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--frontier", required=True, nargs="+", metavar="CSV",
                        help="frontier.csv of `lynx-bench frontier`; several runs of one model "
                             "(each paired against its own stock on the same windows) pool their "
                             "settings")  # fmt: skip
    parser.add_argument("--max-dnll-pct", type=float, default=1.0,
                        help="the largest mean decode NLL increase a setting may cost, in percent "
                             "(default 1.0)")  # fmt: skip
    parser.add_argument("--model", default=None,
                        help="the checkpoint the frontier measured (default: its `model` column); "
                             "its config names the model_type and the family defaults")  # fmt: skip
    parser.add_argument("--out", required=True, help="policy file to write (JSON)")
    g = parser.add_argument_group("TPOT controller file (docs/CONTROLLER.md)")
    g.add_argument("--controller-out", metavar="FILE",
                   help="also write a controller file whose floors are, per measured batch size, "
                        "the most aggressive value of --controller-kind within the same limit")  # fmt: skip
    g.add_argument("--controller-kind", choices=["keep_k0", "budget"], default="keep_k0",
                   help="the policy kind the controller turns: keep_k0's k0 (default) or a "
                        "budget's K; floors come from the frontier's settings of that kind that "
                        "set only that field (keep_k0:k0=N, budget:budget=N)")  # fmt: skip
    g.add_argument("--ladder", type=int, nargs="+", metavar="N",
                   help="the controller's settings, least aggressive first (for keep_k0, start at "
                        "the router's k)")  # fmt: skip
    g.add_argument("--target-ms", type=float, help="the controller's decode step target, ms")


def main(args: argparse.Namespace) -> int:
    import math

    from lynx_ops.bench import choose
    from lynx_ops.registry import PolicyError, router_shape, select_policy

    if not math.isfinite(args.max_dnll_pct):
        raise SystemExit("choose: --max-dnll-pct must be a finite number")
    rows = choose.read_frontiers([Path(f) for f in args.frontier])
    model = Path(args.model or rows[0].get("model") or "")
    try:
        config = json.loads((model / "config.json").read_text())
    except (OSError, ValueError) as e:
        raise SystemExit(f"choose: cannot read the checkpoint's config.json under '{model}' ({e}); "
                         "give --model DIR") from None  # fmt: skip
    _, top_k = router_shape(config)
    try:
        default = select_policy(config, config_file=None).policy
    except PolicyError as e:
        raise SystemExit(f"choose: {e}") from None
    if default is None or not top_k or not config.get("model_type"):
        raise SystemExit(f"choose: {model} is not an MoE checkpoint Lynx covers")
    picked = choose.choose(rows, args.max_dnll_pct)
    print(f"rule: fewest experts with mean decode NLL change <= {args.max_dnll_pct:g}% "
          f"({', '.join(args.frontier)})")  # fmt: skip
    print(f"{'batch':>5}  {'setting':40s} {'dNLL %':>7} {'experts':>15}")
    for batch, row in picked.items():
        if row is None:
            print(f"{batch:>5}  {'(none within the limit: off)':40s}")
            continue
        print(f"{batch:>5}  {row['setting']:40s} {row['dnll_pct']:>+7.2f} "
              f"{row['experts_before']:>6.1f} -> {row['experts_after']:<6.1f}")  # fmt: skip
    entry = choose.policy_entry(picked, config["model_type"], default)
    choose.write_policy(entry, Path(args.out))
    print(f"policy file: {args.out} (VLLM_LYNX_CONFIG_FILE={args.out})")
    if args.controller_out:
        _controller(args, rows, top_k)
    return 0


def _controller(args: argparse.Namespace, rows: list, top_k: int) -> None:
    from lynx_ops.bench import choose

    if not args.ladder or args.target_ms is None:
        raise SystemExit("choose: --controller-out needs --ladder and --target-ms")
    if args.controller_kind == "keep_k0" and args.ladder[0] > top_k:
        raise SystemExit(f"choose: a keep_k0 ladder starts at most at the router's k={top_k}, "
                         f"got {args.ladder[0]}")  # fmt: skip
    floors = choose.controller_floors(rows, args.controller_kind, args.max_dnll_pct,
                                      args.ladder[0])  # fmt: skip
    field = choose.CONTROLLED[args.controller_kind]
    print(f"controller floors ({args.controller_kind} {field}, the same limit): "
          + ", ".join(f"B<={b}: {field}>={v}" for b, v in floors))  # fmt: skip
    choose.write_controller({"target_ms": args.target_ms, "ladder": args.ladder,
                             "floors": floors}, Path(args.controller_out))  # fmt: skip
    print(f"controller file: {args.controller_out} (VLLM_LYNX_CONTROLLER_FILE; the policy it "
          f"turns needs kind {args.controller_kind})")  # fmt: skip
