# SPDX-License-Identifier: Apache-2.0
"""GPU tier (not in CI): Lynx under vLLM features that change the MoE kernels (issue 6).

Multi-LoRA MoE: a Qwen3-30B-A3B-shaped dummy model (2 layers, real per-layer shapes, gates re-drawn
to spread 2 / skew 1) served with two random-weight expert LoRA adapters (written locally), eager
so that a probe sees every call. The probe records the expert ids that vLLM's fused-MoE LoRA kernel
receives; the test checks they are Lynx's remapped ids: per decode call the distinct ids the LoRA
kernel saw add up to Lynx's own device-counted "after" total, and that total is below "before"
(the ids the router chose). Outputs must be valid token ids of the requested length.
"""

from __future__ import annotations

import pytest

from lynx_ops.bench.engine_job import run_in_subprocess
from lynx_ops.bench.lora_adapters import write_adapters
from lynx_ops.bench.model_configs import write_model_dir
from tests.vllm_gpu.specs import decode_spec

pytestmark = pytest.mark.vllm_gpu
torch = pytest.importorskip("torch")
if not torch.cuda.is_available():
    pytest.skip("needs a GPU", allow_module_level=True)

from tests.vllm_gpu.test_families import ENGINE  # noqa: E402  (after the GPU skip)

BATCH, DECODE, LAYERS = 32, 16, 2


def test_lora_kernels_see_remapped_ids(tmp_path):
    model_dir = write_model_dir("qwen3-moe", tmp_path / "model", num_layers=LAYERS)
    adapters = write_adapters(model_dir, tmp_path / "lora", 2, rank=8)
    # No prefix caching: the decode phase's first step is then the full prefill, never a
    # one-token-per-request step that could be mistaken for decode.
    engine = {**ENGINE, "enforce_eager": True, "enable_prefix_caching": False,
              "enable_lora": True, "max_loras": 2, "max_lora_rank": 8}  # fmt: skip
    spec = decode_spec(model_dir, engine, batch=BATCH, decode=DECODE,
                       lora={"paths": [str(p) for p in adapters]},
                       probe="tests.vllm_gpu.lora_probe")  # fmt: skip
    proc, on = run_in_subprocess(spec, tmp_path / "on", "on")
    assert on is not None, f"engine failed\n{(proc.stdout + proc.stderr)[-6000:]}"
    decode = on["phases"][1]
    per_layer = decode["lynx"]["layers"]
    assert len(per_layer) == LAYERS, per_layer
    decode_calls = [distinct for rows, distinct in decode["probe"] if rows == BATCH]
    remaps = sum(v["calls"] for v in per_layer.values())
    assert remaps == LAYERS * (DECODE - 1), per_layer
    assert len(decode_calls) == remaps, f"LoRA kernel calls {len(decode_calls)} vs remaps {remaps}"
    after = sum(v["calls"] * v["after"] for v in per_layer.values())
    before = sum(v["calls"] * v["before"] for v in per_layer.values())
    seen = sum(decode_calls)
    assert abs(seen - after) < 0.5, f"LoRA kernel saw {seen} distinct ids, Lynx chose {after:.1f}"
    assert after < before - 1, f"no remap to check: before {before:.1f}, after {after:.1f}"
    for tokens in decode["tokens"]:
        assert len(tokens) == DECODE and all(0 <= t < 151936 for t in tokens)
