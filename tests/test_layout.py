# SPDX-License-Identifier: Apache-2.0
"""House rules that keep the product apart from its benchmark, checked on the source itself."""

from __future__ import annotations

import ast
import importlib.metadata
from pathlib import Path

import lynx_ops

PACKAGE = Path(lynx_ops.__file__).parent
# The main job (demo, compare) drives the benchmark's engine runners: it is a tool, not the plugin.
TOOLS = {"demo.py", "compare.py"}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names |= {f"{node.module}.{a.name}" for a in node.names}
    return names


def test_product_modules_import_nothing_from_the_benchmark():
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE)
        if rel.parts[0] == "bench" or rel.name in TOOLS:
            continue
        if any(n == "lynx_ops.bench" or n.startswith("lynx_ops.bench.") for n in _imports(path)):
            offenders.append(str(rel))
    assert not offenders, f"product modules importing lynx_ops.bench: {offenders}"


def test_benchmark_uses_no_private_plugin_state():
    offenders = [str(p.relative_to(PACKAGE)) for p in (PACKAGE / "bench").rglob("*.py")
                 if "_STATE" in p.read_text()]  # fmt: skip
    assert not offenders, f"bench modules reading plugin._STATE: {offenders}"


def test_version_is_single_sourced():
    assert importlib.metadata.version("lynx-ops") == lynx_ops.__version__


def test_every_lynx_bench_subcommand_is_its_own_module():
    """cli.py only registers: each subcommand's module has HELP, add_cli_args and main, and its
    parser builds (--help exits 0)."""
    import importlib

    import pytest

    from lynx_ops.bench import cli

    for name in cli.COMMANDS:
        module = importlib.import_module(f"lynx_ops.bench.commands.{name}")
        assert isinstance(module.HELP, str) and module.HELP, name
        assert callable(module.add_cli_args) and callable(module.main), name
        with pytest.raises(SystemExit) as exit_info:
            cli.main([name, "--help"])
        assert exit_info.value.code == 0, name
    source = (PACKAGE / "bench" / "cli.py").read_text()
    assert "add_argument(" not in source, "a subcommand's arguments belong in its own module"
