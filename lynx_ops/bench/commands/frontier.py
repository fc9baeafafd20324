# SPDX-License-Identifier: Apache-2.0
"""`lynx-bench frontier`: experts vs decode NLL for a grid of policy settings (bench/frontier.py)."""

from __future__ import annotations

import argparse
from pathlib import Path

from lynx_ops.bench.commands.common import checkpoint_or_embedded, parse_engine_args

HELP = "experts vs decode NLL for a grid of policy settings"


def add_cli_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", default=None, help="local checkpoint (default: the embedded one)"
    )
    parser.add_argument("--setting", action="append", default=[], metavar="KIND:key=value,...",
                        help="a policy setting, e.g. bins:alpha=3,beta=2, budget:fraction=0.5, "
                             "keep_k0:k0=2 (repeat; default: a grid over the three kinds)")  # fmt: skip
    parser.add_argument("--batches", type=int, nargs="+", default=[8, 16, 32])
    parser.add_argument("--window-sets", type=int, default=2,
                        help="disjoint sets of held-out windows; the NLL change is paired per set")  # fmt: skip
    parser.add_argument("--prompt-len", type=int, default=64)
    parser.add_argument("--forced-len", type=int, default=64)
    parser.add_argument("--engine-arg", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--out", default="perf/results/lynx-frontier")


def main(args: argparse.Namespace) -> int:
    from lynx_ops.bench import frontier

    return frontier.run(checkpoint_or_embedded(args.model), args.setting, args.batches,
                        args.window_sets, args.prompt_len, args.forced_len,
                        parse_engine_args(args.engine_arg), Path(args.out))  # fmt: skip
