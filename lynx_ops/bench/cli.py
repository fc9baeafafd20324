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
import importlib
import sys

# Subcommands, each a module under lynx_ops.bench.commands with HELP, add_cli_args and main.
COMMANDS = ("offline", "fidelity", "frontier", "choose", "online", "soak")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="lynx-bench", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in COMMANDS:
        module = importlib.import_module(f"lynx_ops.bench.commands.{name}")
        parser = sub.add_parser(name, help=module.HELP)
        module.add_cli_args(parser)
        parser.set_defaults(run=module.main)
    args = ap.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
