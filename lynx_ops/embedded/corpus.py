# SPDX-License-Identifier: Apache-2.0
"""The offline corpus: the Python standard library's own sources, present on every machine.

Files are split by a hash of their path relative to the stdlib root, so the split is the same on
every Python version for the files they share: HELD_OUT_EVERY-th bucket is held out of training
(tokenizer and model) and is what the fidelity harness reads.
"""

from __future__ import annotations

import hashlib
import sysconfig
from pathlib import Path

HELD_OUT_EVERY = 20  # 5% of files
_SKIP_DIRS = {"site-packages", "test", "tests", "idlelib", "lib2to3", "__pycache__", "turtledemo"}
MAX_FILE_BYTES = 200_000


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def _bucket(rel: str) -> int:
    return int(hashlib.sha256(rel.encode()).hexdigest()[:8], 16) % HELD_OUT_EVERY


def files(split: str, root: Path | None = None) -> list[Path]:
    """Sorted stdlib .py files of a split: 'train' or 'heldout'."""
    if split not in ("train", "heldout"):
        raise ValueError(f"split {split!r}: use 'train' or 'heldout'")
    root = root or stdlib_root()
    out = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        if set(rel.split("/")[:-1]) & _SKIP_DIRS or path.stat().st_size > MAX_FILE_BYTES:
            continue
        if (_bucket(rel) == 0) == (split == "heldout"):
            out.append(path)
    return out


def texts(split: str, root: Path | None = None) -> list[str]:
    return [p.read_text(encoding="utf-8", errors="replace") for p in files(split, root)]


def fingerprint(paths: list[Path], root: Path | None = None) -> str:
    """sha256 over the relative paths and contents: what exactly was read."""
    root = root or stdlib_root()
    h = hashlib.sha256()
    for p in paths:
        h.update(p.relative_to(root).as_posix().encode())
        h.update(p.read_bytes())
    return h.hexdigest()[:16]
