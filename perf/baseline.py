# SPDX-License-Identifier: Apache-2.0
"""Another revision's module, loaded from a file beside today's, so a benchmark can time the two
in one run (`git show REV:lynx_ops/kernels/remap.py > FILE`). The file keeps its own source path,
which Triton needs to read the kernels' source; its imports resolve to today's package."""

from __future__ import annotations

import importlib.util
from types import ModuleType


def load_file_module(path: str, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ValueError(f"cannot load a Python module from {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
