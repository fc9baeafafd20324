# SPDX-License-Identifier: Apache-2.0
"""Re-export: provenance lives in the package so the installed `lynx-bench` stamps rows too."""

from lynx_ops.bench.provenance import provenance, write_csv  # noqa: F401
