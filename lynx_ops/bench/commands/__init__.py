# SPDX-License-Identifier: Apache-2.0
"""One module per `lynx-bench` subcommand, each with HELP, `add_cli_args(parser)` and `main(args)`;
`lynx_ops.bench.cli` only registers them."""
