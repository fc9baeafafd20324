# SPDX-License-Identifier: Apache-2.0
"""Every environment variable lynx_ops reads, documented where it is defined. Read lazily (at the
call), never cached at import, so tests and subprocesses see the value in force."""

from __future__ import annotations

import os

ENVIRONMENT_VARIABLES = {
    # "1" turns the vLLM plugin on. Unset or "0": the plugin does nothing, vLLM is stock.
    "VLLM_LYNX_ENABLED": lambda: (
        os.environ.get("VLLM_LYNX_ENABLED", "0").strip().lower() in ("1", "true", "yes", "on")
    ),
    # Path of a JSON policy file (docs/MODELS.md) that overrides or adds family policies.
    "VLLM_LYNX_CONFIG_FILE": lambda: os.environ.get("VLLM_LYNX_CONFIG_FILE") or None,
    # Seconds between "[lynx] stats" log lines from each worker (decode remaps and distinct experts
    # per layer since the last line); 0 turns them off.
    "VLLM_LYNX_LOG_INTERVAL": lambda: float(os.environ.get("VLLM_LYNX_LOG_INTERVAL", "60") or 0),
    # Seconds between each worker's updates of the Lynx counters that vLLM's Prometheus /metrics
    # exports when serving (lynx_decode_remaps_total, lynx_experts_per_step_before/_after,
    # lynx_moved_assignment_share, ...); 0 turns the export off.
    "VLLM_LYNX_METRICS_INTERVAL": lambda: float(
        os.environ.get("VLLM_LYNX_METRICS_INTERVAL", "10") or 0
    ),
    # Benchmarks only: K > 0 replaces the remap in decode steps by k consecutive experts mod K from
    # each row's top-1 (distinct per row), forcing every MoE layer onto at most K experts: the best
    # step time any remap could reach at that expert count. Outputs are meaningless.
    "VLLM_LYNX_CEILING_EXPERTS": lambda: int(os.environ.get("VLLM_LYNX_CEILING_EXPERTS", "0") or 0),
}


def validate() -> None:
    """Read every variable once, so a malformed value fails at startup naming the variable."""
    for name, read in ENVIRONMENT_VARIABLES.items():
        try:
            value = read()
        except ValueError as e:
            raise ValueError(f"{name}={os.environ.get(name)!r} is not valid: {e}") from None
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value < 0:
            raise ValueError(f"{name}={os.environ.get(name)!r} must be >= 0")


def __getattr__(name: str):
    if name in ENVIRONMENT_VARIABLES:
        return ENVIRONMENT_VARIABLES[name]()
    raise AttributeError(name)
