# SPDX-License-Identifier: Apache-2.0
"""Every environment variable lynx_ops reads, documented where it is defined. Read lazily (at the
call), never cached at import, so tests and subprocesses see the value in force. A malformed value
raises ValueError naming the variable, the value and what is allowed; `validate()` reads them all
once at startup so that happens before serving."""

from __future__ import annotations

import math
import os

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("", "0", "false", "no", "off")
# Telemetry intervals: below this a stats thread would spin on file writes and device copies.
MIN_INTERVAL_S = 1.0


def _flag(name: str) -> bool:
    value = os.environ.get(name, "").strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(
        f"{name}={os.environ[name]!r} is not a recognised value; use one of "
        f"{', '.join(_TRUE)} (on) or {', '.join(repr(v) for v in _FALSE)} (off)"
    )


def _interval(name: str, default: float) -> float:
    """Seconds, finite; 0 turns the feature off; unset or empty is the default."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not a number of seconds") from None
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name}={raw!r} must be a finite number of seconds >= 0 (0 = off)")
    if 0 < value < MIN_INTERVAL_S:
        raise ValueError(f"{name}={raw!r} is below the {MIN_INTERVAL_S:g} s floor (0 = off)")
    return value


def _count(name: str) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return 0
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not an integer") from None
    if value < 0:
        raise ValueError(f"{name}={raw!r} must be >= 0")
    return value


ENVIRONMENT_VARIABLES = {
    # "1" (or true/yes/on) turns the vLLM plugin on. Unset, empty or "0" (false/no/off): the
    # plugin does nothing, vLLM is stock. Anything else stops startup with a message.
    "VLLM_LYNX_ENABLED": lambda: _flag("VLLM_LYNX_ENABLED"),
    # Path of a JSON policy file (docs/MODELS.md) that overrides or adds family policies.
    "VLLM_LYNX_CONFIG_FILE": lambda: os.environ.get("VLLM_LYNX_CONFIG_FILE") or None,
    # Seconds between "[lynx] stats" log lines from each worker (decode remaps and distinct experts
    # per layer since the last line); 0 turns them off; at least 1 otherwise.
    "VLLM_LYNX_LOG_INTERVAL": lambda: _interval("VLLM_LYNX_LOG_INTERVAL", 60.0),
    # Seconds between each worker's updates of the Lynx counters that vLLM's Prometheus /metrics
    # exports when serving (lynx_decode_remaps_total, lynx_experts_per_step_before/_after,
    # lynx_moved_assignment_share, ...); 0 turns the export off; at least 1 otherwise.
    "VLLM_LYNX_METRICS_INTERVAL": lambda: _interval("VLLM_LYNX_METRICS_INTERVAL", 10.0),
    # Benchmarks only (lynx_ops.bench.ceiling, read where lynx-bench's worker extension loads): K > 0
    # replaces the remap in decode steps by k consecutive experts mod K from each row's top-1,
    # forcing every MoE layer onto at most K experts: the best step time any remap could reach at
    # that expert count. Outputs are meaningless.
    "VLLM_LYNX_CEILING_EXPERTS": lambda: _count("VLLM_LYNX_CEILING_EXPERTS"),
    # Path of a JSON file with the TPOT controller's settings (docs/CONTROLLER.md: target_ms,
    # ladder, floors, ...), read by Lynx's scheduler (`--scheduler-cls
    # lynx_ops.integration.scheduler.LynxAsyncScheduler`); that scheduler refuses to start without it.
    "VLLM_LYNX_CONTROLLER_FILE": lambda: os.environ.get("VLLM_LYNX_CONTROLLER_FILE") or None,
}


def validate() -> None:
    """Read every variable once, so a malformed value fails at startup naming the variable."""
    for read in ENVIRONMENT_VARIABLES.values():
        read()


def __getattr__(name: str):
    if name in ENVIRONMENT_VARIABLES:
        return ENVIRONMENT_VARIABLES[name]()
    raise AttributeError(name)
