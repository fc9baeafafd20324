# SPDX-License-Identifier: Apache-2.0
"""GPU tier (not in CI): GPT-OSS with MXFP4 experts on Hopper (issue 21, item 10).

vLLM's default MXFP4 backend for GPT-OSS on Hopper may be a monolithic expert kernel, which routes
inside the kernel and never calls the router Lynx wraps. Lynx must then say so in one line that
names the workaround, and serve stock; with the workaround (`moe_backend="marlin"`) the router runs
and Lynx remaps. A dummy MXFP4 checkpoint of the GPT-OSS-20B shape (2 layers, 32 experts, k=4;
`quantization_config: {"quant_method": "mxfp4"}`), gates drawn by the `lynx_dummy` load format,
which zeroes the packed weights and scales (their dummy values would be uninitialised memory).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from lynx_ops.bench.engine_job import run_in_subprocess
from lynx_ops.bench.model_configs import write_model_dir
from tests.vllm_gpu.specs import decode_spec

pytestmark = pytest.mark.vllm_gpu
torch = pytest.importorskip("torch")
if not torch.cuda.is_available():
    pytest.skip("needs a GPU", allow_module_level=True)

from tests.vllm_gpu.test_families import ENGINE  # noqa: E402  (after the GPU skip)

BATCH, DECODE, LAYERS = 16, 8, 2
WARNING = "Lynx cannot act on"
WORKAROUND = "--moe-backend marlin"


def _run(tmp_path: Path, name: str, extra: dict):
    model_dir = write_model_dir("gpt-oss", tmp_path / "model", num_layers=LAYERS,
                                quantization={"quant_method": "mxfp4"})  # fmt: skip
    spec = decode_spec(model_dir, {**ENGINE, "enable_prefix_caching": False, **extra},
                       batch=BATCH, decode=DECODE)  # fmt: skip
    proc, result = run_in_subprocess(spec, tmp_path / name, "on")
    log = proc.stdout + proc.stderr
    assert result is not None, f"{name}: engine failed\n{log[-6000:]}"
    decode = result["phases"][1]
    remaps = sum(v["calls"] for v in decode["lynx"]["layers"].values())
    warned = [ln for ln in log.splitlines() if WARNING in ln]
    # vLLM's own line, "Using '<backend>' Mxfp4 MoE backend." (oracle/mxfp4.py)
    backend = sorted({ln.split("Using", 1)[1].strip() for ln in log.splitlines()
                      if "Using '" in ln and "Mxfp4 MoE backend" in ln})  # fmt: skip
    for tokens in decode["tokens"]:
        assert len(tokens) == DECODE and all(0 <= t < 201088 for t in tokens)
    row = {"run": name, "engine_extra": extra, "remaps": remaps, "warning": warned[:1],
           "backend_lines": backend, "layers": decode["lynx"]["layers"]}  # fmt: skip
    out = os.environ.get("LYNX_RESULTS_DIR")
    if out:
        with open(Path(out) / "vllm_gpu_mxfp4.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
    return row, warned


def test_mxfp4_default_backend_is_named_or_remapped(tmp_path):
    """Default backend: either monolithic (one warning naming the workaround, no remap: stock) or
    modular (remaps, no warning). Which one vLLM picked is recorded."""
    row, warned = _run(tmp_path, "default", {})
    if warned:
        assert len(warned) == 1, warned  # once per process, not per layer or step
        assert WORKAROUND in warned[0], warned[0]
        assert row["remaps"] == 0, row
    else:
        assert row["remaps"] == LAYERS * (DECODE - 1), row


def test_mxfp4_marlin_backend_remaps(tmp_path):
    """The documented workaround: the router runs, so every decode step is remapped."""
    row, warned = _run(tmp_path, "marlin", {"moe_backend": "marlin"})
    assert not warned, warned
    assert row["remaps"] == LAYERS * (DECODE - 1), row
    for name, v in row["layers"].items():
        assert v["after"] < v["before"], f"{name}: nothing remapped {v}"
