# SPDX-License-Identifier: Apache-2.0
"""Tensor parallelism on vllm-cpu: TP=2 over two CPU workers (one core each, gloo), a tiny
dummy-weight Qwen3-MoE with gates re-drawn (spread 2, skew 1). Both ranks must return bitwise the
same remapped ids and weights for every layer and decode step (a worker extension records them in
each rank, tests/rank_probe.py), the remap must act, and with the flag unset the tokens must equal
stock vLLM's (no plugin) under the same TP=2. The GPU version is tests/vllm_gpu/test_parallel.py."""

from __future__ import annotations

import random

import pytest

from lynx_ops.bench.engine_job import run_in_subprocess
from lynx_ops.bench.model_configs import write_model_dir
from tests.rank_probe import ranks_agree

pytestmark = [pytest.mark.vllm_cpu, pytest.mark.slow]
pytest.importorskip("vllm")

DECODE = 6
# vLLM's CPU workers bind their OpenMP threads per rank; one core each on a 2-core machine.
ENV = {"VLLM_CPU_OMP_THREADS_BIND": "0|1"}


def _spec(model_dir, probe: bool) -> dict:
    rng = random.Random(0)
    prompts = [[rng.randrange(3, 1000) for _ in range(rng.randrange(8, 24))] for _ in range(8)]
    engine = {"max_model_len": 128, "max_num_seqs": 16, "kv_cache_memory_bytes": 2**28,
              "enable_prefix_caching": False, "tensor_parallel_size": 2,
              "distributed_executor_backend": "mp"}  # fmt: skip
    if probe:
        engine["worker_extension_cls"] = "tests.rank_probe.RankProbeWorker"
    return {"model": str(model_dir), "prompts": prompts, "spread": 2.0, "skew": 1.0,
            "engine": engine, "rank_probe": {"all_calls": False} if probe else None,
            "phases": [{"name": "prefill", "max_tokens": 1},
                       {"name": "decode", "max_tokens": DECODE}]}  # fmt: skip


def _run(spec, workdir, mode):
    proc, result = run_in_subprocess(spec, workdir, mode, env=ENV, timeout=900)
    assert result is not None, f"{mode} failed:\n{(proc.stdout + proc.stderr)[-4000:]}"
    return result


def test_tp2_ranks_agree_bitwise_and_flag_off_is_stock(tmp_path):
    model_dir = write_model_dir("qwen3-moe", tmp_path / "m", num_layers=2, tiny=True)
    on = _run(_spec(model_dir, probe=True), tmp_path / "on", "on")
    decode = on["phases"][1]
    assert sorted(on["probe_ranks"]) == [0, 1]
    records = ranks_agree(decode)  # all_calls off: every record is a remap
    assert len(records) == 2 * (DECODE - 1), "one remap per layer and decode step on rank 0"
    for name, v in decode["lynx"]["layers"].items():
        assert v["calls"] == DECODE - 1 and v["after"] < v["before"], (name, v)
    stock = _run(_spec(model_dir, probe=False), tmp_path / "stock", "no-plugin")
    off = _run(_spec(model_dir, probe=False), tmp_path / "off", "off")
    assert [p["tokens"] for p in off["phases"]] == [p["tokens"] for p in stock["phases"]]
