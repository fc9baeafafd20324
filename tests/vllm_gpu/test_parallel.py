# SPDX-License-Identifier: Apache-2.0
"""Two-GPU tier (issue 6; `nvidia-h200-x2`, not in CI): Lynx under tensor and expert parallelism.

Dummy-weight models at real per-layer shapes (2 layers), gates re-drawn (spread 2, skew 1), eager
engines so that a worker extension (rank_probe.py) sees every routing call on every rank:
* TP=2, Qwen3-MoE and Mixtral shapes: flag off is token-identical to stock (no plugin); flag on,
  both ranks return bitwise the same remapped ids and weights for every layer and step, the
  remap acts (experts drop), outputs are valid;
* EP=2 without EPLB: the same rank agreement and validity;
* EP=2 with EPLB (window = interval, so every step is recorded and nothing is rearranged): the
  load EPLB records, folded back to logical experts, equals the count of the ids Lynx returned,
  remapped in decode and as routed in prefill: EPLB sees what ran, on logical ids mapped after Lynx.
NVLink multicast stays off in every process (NCCL_NVLS_ENABLE=0, TORCH_SYMM_MEM_DISABLE_MULTICAST=1,
NVSHMEM_DISABLE_NVLS=1).
"""

from __future__ import annotations

import collections
import re

import pytest

from lynx_ops.bench.engine_job import run_in_subprocess
from lynx_ops.bench.model_configs import write_model_dir
from tests.rank_probe import ranks_agree
from tests.vllm_gpu.specs import decode_spec

pytestmark = pytest.mark.vllm_gpu
torch = pytest.importorskip("torch")
if torch.cuda.device_count() < 2:
    pytest.skip("needs two GPUs", allow_module_level=True)

BATCH, DECODE, LAYERS = 32, 12, 2
NO_MULTICAST = {
    "NCCL_NVLS_ENABLE": "0",
    "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1",
    "NVSHMEM_DISABLE_NVLS": "1",
}
# A fixed KV cache skips vLLM's memory profiling, so the tests can share the GPUs (pytest -n):
# profiling fails when another process frees memory meanwhile.
ENGINE = {"max_model_len": 512, "max_num_seqs": 64, "gpu_memory_utilization": 0.15,
          "kv_cache_memory_bytes": 2**30, "tensor_parallel_size": 2, "enforce_eager": True,
          "enable_prefix_caching": False,
          "worker_extension_cls": "tests.rank_probe.RankProbeWorker"}  # fmt: skip


def _spec(model_dir, engine_extra: dict, rank_probe: dict) -> dict:
    return decode_spec(model_dir, {**ENGINE, **engine_extra}, batch=BATCH, decode=DECODE,
                       rank_probe=rank_probe)  # fmt: skip


def _run(spec, workdir, mode):
    proc, result = run_in_subprocess(spec, workdir, mode, env=NO_MULTICAST)
    assert result is not None, f"{mode}: engine failed\n{(proc.stdout + proc.stderr)[-6000:]}"
    return result


def _check_decode(result: dict) -> list:
    decode = result["phases"][1]
    per_layer = decode["lynx"]["layers"]
    assert len(per_layer) == LAYERS
    for name, v in per_layer.items():
        assert v["calls"] == DECODE - 1, f"{name}: {v['calls']} remaps for {DECODE - 1} steps"
        assert v["after"] < v["before"], f"{name}: experts did not drop {v}"
    for tokens in decode["tokens"]:
        assert len(tokens) == DECODE and all(isinstance(t, int) and t >= 0 for t in tokens)
    return ranks_agree(decode)


@pytest.mark.parametrize("family", ["qwen3-moe", "mixtral"])
def test_tensor_parallel(family, tmp_path):
    model_dir = write_model_dir(family, tmp_path / family, num_layers=LAYERS)
    spec = _spec(model_dir, {}, {"all_calls": False})
    on = _run(spec, tmp_path / "on", "on")
    _check_decode(on)
    plain = {**spec, "rank_probe": None,
             "engine": {k: v for k, v in spec["engine"].items() if k != "worker_extension_cls"}}  # fmt: skip
    stock = _run(plain, tmp_path / "stock", "no-plugin")
    off = _run(plain, tmp_path / "off", "off")
    assert [p["tokens"] for p in off["phases"]] == [p["tokens"] for p in stock["phases"]], (
        "flag off differs from stock under TP=2"
    )


def test_expert_parallel(tmp_path):
    model_dir = write_model_dir("qwen3-moe", tmp_path / "m", num_layers=LAYERS)
    spec = _spec(model_dir, {"enable_expert_parallel": True}, {"all_calls": False})
    _check_decode(_run(spec, tmp_path / "on", "on"))


def test_expert_parallel_eplb_records_what_ran(tmp_path):
    model_dir = write_model_dir("qwen3-moe", tmp_path / "m", num_layers=LAYERS)
    eplb = {"enable_expert_parallel": True, "enable_eplb": True,
            "eplb_config": {"window_size": 5000, "step_interval": 5000}}  # fmt: skip
    result = _run(_spec(model_dir, eplb, {"all_calls": True, "eplb": True}), tmp_path / "on", "on")
    records = _check_decode(result)
    counts = collections.defaultdict(collections.Counter)  # layer name -> logical id -> tokens
    for name, ids, _ in records:
        counts[name].update(i for row in ids for i in row)
    names = sorted(counts, key=lambda n: int(re.search(r"\.(\d+)\.", n).group(1)))
    for rank_load in result["phases"][1]["eplb_logical_load"]:
        for layer, name in enumerate(names):
            expected = [counts[name].get(e, 0) for e in range(len(rank_load[layer]))]
            assert rank_load[layer] == expected, f"{name}: EPLB recorded a different load"
