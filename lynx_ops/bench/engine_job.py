# SPDX-License-Identifier: Apache-2.0
"""One vLLM engine run, in its own process: build, optionally re-draw the gates, generate, report.

    python -m lynx_ops.bench.engine_job SPEC.json  ->  prints one JSON line prefixed "RESULT "

Whether Lynx is on is the caller's environment (VLLM_LYNX_ENABLED), read by the plugin when vLLM
starts. The spec: model (dir), load_format, prompts (token-id lists), phases (list of
{"name", "max_tokens"}), spread/skew (router realism through the `lynx_dummy` load format,
lynx_ops.bench.dummy_loader; null = vLLM's plain dummy router), engine (extra LLM kwargs), lora ({"paths": [...]}: one LoRA adapter per prompt, round-robin), probe (a module
path: its `install()` runs before the engine is built and its `collect()`, if any, after each phase, for
tests that watch a vLLM internal in this process), rank_probe ({"all_calls": bool, "eplb":
bool}: the engine's worker_extension_cls, tests/rank_probe.py, records every rank's routing and,
with eplb, EPLB's recorded expert load per phase; called by name through collective_rpc, so it
reaches workers in other processes), worker_report ("module:function": called on each worker
through collective_rpc right after the engine is built, for tests that inspect the loaded
model). Each phase reports token ids and the Lynx counters
accumulated during it.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from lynx_ops.bench.workers import read_result, worker_env

MODES = ("no-plugin", "off", "on")


def _lynx_snapshot(worker):
    from lynx_ops.integration import layers

    return {"layers": layers.snapshot(), "decisions": dict(layers.DECISIONS)}


def _lynx_active() -> bool:
    from lynx_ops import plugin

    return plugin.is_installed()


def main(spec_path: str) -> None:
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    from lynx_ops.bench import dummy_loader  # registers the lynx_dummy load format here
    from lynx_ops.bench.offline import engine_kwargs, lora_requests
    from lynx_ops.bench.worker_ext import lynx_reset

    spec = json.loads(Path(spec_path).read_text())
    probe = importlib.import_module(spec["probe"]) if spec.get("probe") else None
    if probe is not None:
        probe.install()
    t0 = time.perf_counter()
    llm = LLM(model=spec["model"], skip_tokenizer_init=spec.get("skip_tokenizer_init", True),
              seed=0, **engine_kwargs(spec))  # fmt: skip
    startup_s = time.perf_counter() - t0
    prompts = [p if isinstance(p, str) else TokensPrompt(prompt_token_ids=p)
               for p in spec["prompts"]]  # fmt: skip
    result = {"startup_s": round(startup_s, 1), "lynx_installed": _lynx_active(), "phases": []}

    if spec.get("worker_report"):
        module, _, func = spec["worker_report"].partition(":")
        result["worker_report"] = llm.collective_rpc(getattr(importlib.import_module(module), func))
    rank_probe = spec.get("rank_probe") or {}
    if rank_probe:
        result["probe_ranks"] = llm.collective_rpc(
            "lynx_probe_install", args=(bool(rank_probe.get("all_calls")),)
        )
    if spec.get("spread") is not None:
        result["router"] = llm.collective_rpc(dummy_loader.last_draw)[0]

    for phase in spec["phases"]:
        if result["lynx_installed"]:
            llm.collective_rpc(lynx_reset)
        if rank_probe.get("eplb"):
            llm.collective_rpc("lynx_probe_eplb_reset")
        params = SamplingParams(max_tokens=phase["max_tokens"], temperature=0.0, ignore_eos=True)
        t0 = time.perf_counter()
        outs = llm.generate(
            prompts,
            params,
            use_tqdm=False,
            lora_request=lora_requests(spec.get("lora"), len(prompts)),
        )
        entry = {"name": phase["name"], "seconds": round(time.perf_counter() - t0, 3),
                 "tokens": [list(o.outputs[0].token_ids) for o in outs],
                 "texts": [o.outputs[0].text for o in outs]}  # fmt: skip
        if result["lynx_installed"]:
            entry["lynx"] = llm.collective_rpc(_lynx_snapshot)[0]
        if probe is not None and hasattr(probe, "collect"):
            entry["probe"] = probe.collect()
        if rank_probe:
            entry["rank_probe"] = llm.collective_rpc("lynx_probe_collect")
        if rank_probe.get("eplb"):
            entry["eplb_logical_load"] = llm.collective_rpc("lynx_probe_eplb_logical_load")
        result["phases"].append(entry)
    print("RESULT " + json.dumps(result), flush=True)


def run_in_subprocess(spec: dict[str, Any], workdir: Path, mode: str,
                      env: dict[str, str] | None = None, timeout: float = 1800):  # fmt: skip
    """Run one engine job in a fresh process. mode: 'no-plugin' (VLLM_PLUGINS excludes Lynx),
    'off' (installed, VLLM_LYNX_ENABLED unset) or 'on'. Returns (CompletedProcess, result|None)."""
    if mode not in MODES:
        raise ValueError(f"mode {mode!r} not one of {MODES}")
    workdir.mkdir(parents=True, exist_ok=True)
    spec_path = workdir / f"spec-{mode}.json"
    spec_path.write_text(json.dumps(spec))
    root = str(Path(__file__).resolve().parents[2])
    full_env = worker_env(
        {"PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", ""), **(env or {})},
        drop=("VLLM_LYNX", "VLLM_PLUGINS"),
    )
    if mode == "no-plugin":
        full_env["VLLM_PLUGINS"] = "none"
    if mode == "on":
        full_env["VLLM_LYNX_ENABLED"] = "1"
    proc = subprocess.run(
        [sys.executable, "-m", "lynx_ops.bench.engine_job", str(spec_path)],
        capture_output=True, text=True, env=full_env, timeout=timeout, cwd=workdir,
    )  # fmt: skip
    return proc, read_result(proc.stdout)


if __name__ == "__main__":
    main(sys.argv[1])
