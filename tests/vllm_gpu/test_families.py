# SPDX-License-Identifier: Apache-2.0
"""GPU tier (H100 through ../shared/devkit; not in CI): every family at its real layer shapes.

Per family, a dummy-weight engine with default compilation and CUDA graphs (FULL_AND_PIECEWISE),
gates re-drawn to logit spread 2 / expert skew 1 (lynx_ops.bench.router_realism):
* flag on: no remap in prefill; one remap per decode step and layer, counted on the device; more
  device-counted remaps than host-side decisions, which proves remaps ran inside replayed FULL
  graphs (a replay runs no Python); distinct experts per layer before and after;
* flag off vs no plugin (families in IDENTITY): token-identical, judged against a second no-plugin
  engine (if stock does not repeat itself on a family, identity cannot be judged there: the test
  fails and says so rather than blaming the plugin);
* families that vLLM runs with PIECEWISE graphs only (Llama 4): under graphs every decode step
  bypasses (the documented safety rule); run eagerly, the remap acts.
Rows go to $LYNX_RESULTS_DIR/vllm_gpu_families.jsonl when set. Select families with
LYNX_GPU_FAMILIES=qwen3-moe,mixtral (default: all).
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

FAMILIES = {  # shape name -> (layers, engine extras)
    "qwen2-moe": (4, {}),  # V2 model runner by default
    "qwen3-moe": (4, {}),
    "mixtral": (4, {}),
    "deepseek-v2-lite": (4, {}),
    "deepseek-v3-style": (4, {}),
    "gpt-oss": (4, {}),
    "llama4-scout": (4, {}),
}
# vLLM 0.26 gives these PIECEWISE graphs only (seen on an H100, 2026-11-23): Lynx must bypass
# every graphed step; an extra eager engine checks the remap itself.
PIECEWISE_ONLY = {"llama4-scout"}
IDENTITY = {"qwen2-moe", "qwen3-moe"}
SELECTED = [f for f in os.environ.get("LYNX_GPU_FAMILIES", ",".join(FAMILIES)).split(",") if f]
BATCH, DECODE = 32, 16
# LYNX_GPU_MEM lowers the share when other work (training, the op's CUDA tier) shares the GPU.
# LYNX_GPU_KV_MIB fixes the KV cache instead, which skips vLLM's memory profiling: that profiling
# fails when another process on the GPU frees memory meanwhile (several families in parallel).
ENGINE = {"max_model_len": 1024, "max_num_seqs": 64,
          "gpu_memory_utilization": float(os.environ.get("LYNX_GPU_MEM", "0.85"))}  # fmt: skip
if os.environ.get("LYNX_GPU_KV_MIB"):
    ENGINE["kv_cache_memory_bytes"] = int(os.environ["LYNX_GPU_KV_MIB"]) * 2**20


def _spec(model_dir: Path, extra: dict) -> dict:
    return decode_spec(model_dir, {**ENGINE, **extra}, batch=BATCH, decode=DECODE, max_len=128)


def _record(row: dict) -> None:
    out = os.environ.get("LYNX_RESULTS_DIR")
    if out:
        with open(Path(out) / "vllm_gpu_families.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")


@pytest.mark.parametrize("family", SELECTED)
def test_family_on_gpu(family, tmp_path):
    layers, extra = FAMILIES[family]
    model_dir = write_model_dir(family, tmp_path / family, num_layers=layers)
    spec = _spec(model_dir, extra)
    proc, on = run_in_subprocess(spec, tmp_path / "on", "on")
    log = proc.stdout + proc.stderr
    assert on is not None, f"{family}: engine failed\n{log[-6000:]}"
    prefill, decode = on["phases"]
    per_layer = decode["lynx"]["layers"]
    assert per_layer, f"{family}: no MoE layer covered\n{log[-3000:]}"
    host_decisions = decode["lynx"]["decisions"].get("uniform decode", 0)
    device_calls = sum(v["calls"] for v in per_layer.values())
    row = {"family": family, "layers": layers, "batch": BATCH, "decode_tokens": DECODE,
           "device_calls": device_calls, "host_decisions": host_decisions,
           "before": {k: round(v["before"], 2) for k, v in per_layer.items()},
           "after": {k: round(v["after"], 2) for k, v in per_layer.items()},
           "router": "dummy weights, gates re-drawn: spread 2, skew 1",
           "announce": [ln for ln in log.splitlines() if "Lynx on:" in ln][-1:]}  # fmt: skip
    row["router_redraw"] = on.get("router")
    if family in PIECEWISE_ONLY:
        _record(row)
        assert device_calls == 0 and "PIECEWISE" in " ".join(row["announce"]), row
        _, eager = run_in_subprocess({**spec, "engine": {**spec["engine"], "enforce_eager": True}},
                                     tmp_path / "eager", "on")  # fmt: skip
        assert eager is not None, f"{family}: eager engine failed"
        per_layer = eager["phases"][1]["lynx"]["layers"]
        _record({**row, "mode": "enforce_eager", "device_calls": sum(v["calls"] for v in per_layer.values()),
                 "before": {k: round(v["before"], 2) for k, v in per_layer.items()},
                 "after": {k: round(v["after"], 2) for k, v in per_layer.items()}})  # fmt: skip
        for name, v in per_layer.items():
            assert v["calls"] == DECODE - 1, f"{name}: {v['calls']} remaps for {DECODE - 1} steps"
            assert v["after"] <= v["before"], f"{name}: {v}"
        return
    if family in IDENTITY:
        _, stock = run_in_subprocess(spec, tmp_path / "stock", "no-plugin")
        _, stock2 = run_in_subprocess(spec, tmp_path / "stock2", "no-plugin")
        _, off = run_in_subprocess(spec, tmp_path / "off", "off")
        tokens = [[p["tokens"] for p in r["phases"]] if r else None for r in (stock, stock2, off)]
        row["stock_repeatable"] = tokens[0] is not None and tokens[0] == tokens[1]
        row["off_identical_to_stock"] = tokens[0] is not None and tokens[0] == tokens[2]
    _record(row)
    assert all(v["calls"] == 0 for v in prefill["lynx"]["layers"].values()), "remap in prefill"
    for name, v in per_layer.items():
        assert v["calls"] == DECODE - 1, f"{name}: {v['calls']} remaps for {DECODE - 1} steps"
        assert v["after"] < v["before"], f"{name}: experts did not drop {v}"
    assert device_calls > host_decisions, "no remap ran inside a replayed graph"
    if family in IDENTITY:
        assert row["stock_repeatable"], "stock vLLM itself differs between two engines here"
        assert row["off_identical_to_stock"], "flag off differs from stock"
