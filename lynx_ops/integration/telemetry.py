# SPDX-License-Identifier: Apache-2.0
"""What Lynx tells the operator: the startup line, the stats thread (log lines and the counters
published for /metrics), and the per-layer snapshot the benchmarks read."""

from __future__ import annotations

import logging
import threading

from lynx_ops.graphs import phase as phase_mod
from lynx_ops.integration import layer_state
from lynx_ops.integration.layer_state import LayerState, log_once
from lynx_ops.registry import format_ranges

logger = logging.getLogger("lynx_ops")


def announce(state: LayerState) -> None:
    """The one startup line per engine: family, policy, layers covered, gating mode."""
    if "announce" in layer_state.LOGGED:  # cheap exit: this runs on every eager MoE call
        return
    mode = state.vllm_config.compilation_config.cudagraph_mode
    gating, useful = phase_mod.describe_gating(mode)
    covered = sorted(s.index for s in layer_state.LAYERS.values())
    log_once(
        "announce", logging.INFO,
        "Lynx on: %s; %d MoE layers covered (%s); router %s E=%d k=%d; gating: %s",
        state.policy.describe(), len(covered), format_ranges(covered), state.facts.kind,
        state.facts.num_experts, state.facts.top_k, gating,
    )  # fmt: skip
    _start_stats_logger()
    if not useful:
        log_once("no-decode", logging.WARNING,
                 "Lynx has no decode step to act on under this graph mode: %s", gating)  # fmt: skip


_LOGGER_THREAD: threading.Thread | None = None


def _start_stats_logger() -> None:
    """A daemon thread that logs what Lynx did since its last line (VLLM_LYNX_LOG_INTERVAL) and
    publishes the counters for /metrics (VLLM_LYNX_METRICS_INTERVAL).

    It reads the device counters with one small copy per layer; under CUDA graphs the counters
    keep counting on replay, so this is the only view of decode steps that run no Python."""
    global _LOGGER_THREAD
    from lynx_ops import envs

    log_s, metrics_s = envs.VLLM_LYNX_LOG_INTERVAL, envs.VLLM_LYNX_METRICS_INTERVAL
    with layer_state.LOCK:
        if (log_s <= 0 and metrics_s <= 0) or _LOGGER_THREAD is not None:
            return
        _LOGGER_THREAD = threading.Thread(target=_stats_loop, args=(log_s, metrics_s),
                                          daemon=True, name="lynx-stats")  # fmt: skip
    _LOGGER_THREAD.start()


def _stats_loop(log_s: float, metrics_s: float) -> None:
    import time

    from lynx_ops.capture_safe import SideReader
    from lynx_ops.integration import metrics

    tick = min(v for v in (log_s, metrics_s) if v > 0)
    failures = 0  # consecutive; the wait grows with them (backoff) and resets on success
    reader = SideReader()  # vLLM captures CUDA graphs while this thread reads: see capture_safe
    previous: dict[int, dict[str, int]] = {}
    next_log = next_publish = time.monotonic()
    next_log += log_s
    while True:
        time.sleep(min(tick * 2**failures, 300.0))
        now = time.monotonic()
        publish = metrics_s > 0 and now >= next_publish
        log = log_s > 0 and now >= next_log
        if not (publish or log):
            continue
        try:
            device = next(
                (s.stats.buffer.device for s in layer_state.LAYERS.values() if s.stats), None
            )
            with reader.reading(device):
                rows = counters()  # one read of the device counters serves both
            if publish:  # the next one is due an interval after a success (a failure retries)
                metrics.publish(rows)
                next_publish = now + metrics_s
            if log:
                next_log = now + log_s
                line = stats_line(previous, rows)
                if line:
                    logger.info("[lynx] stats: %s", line)
            failures = 0
        except Exception as e:  # never let telemetry take the worker down; retry with backoff
            failures = min(failures + 1, 8)
            logger.warning("[lynx] stats unavailable (%s); retrying in %.0f s", e,
                           min(tick * 2**failures, 300.0))  # fmt: skip


def counters() -> list[dict[str, int]]:
    """Cumulative per-layer sums of this process's device counters (for /metrics)."""
    rows = []
    for state in sorted(layer_state.LAYERS.values(), key=lambda st: st.index):
        if state.stats is None:
            continue
        c = state.stats.snapshot()[0]
        rows.append({"layer": state.index, "top_k": state.facts.top_k, "calls": c.calls,
                     "before": c.experts_before, "after": c.experts_after,
                     "top1": c.rows_keeping_top1, "rows": c.rows,
                     "moved": c.assignments_moved})  # fmt: skip
    return rows


def stats_line(
    previous: dict[int, dict[str, int]], rows: list[dict[str, int]] | None = None
) -> str | None:
    """Decode remaps, mean distinct experts per layer and the share of assignments moved since
    `previous` (updated in place), from `counters()` rows (read now if not given)."""
    calls = before = after = layers_active = slots = moved = 0
    for row in counters() if rows is None else rows:
        old = previous.get(row["layer"], {})
        previous[row["layer"]] = row
        delta = {k: row[k] - old.get(k, 0) for k in ("calls", "before", "after", "rows", "moved")}
        if delta["calls"] > 0:
            calls += delta["calls"]
            before += delta["before"]
            after += delta["after"]
            slots += delta["rows"] * row["top_k"]
            moved += delta["moved"]
            layers_active += 1
    if not calls:
        return None
    return (f"{calls // layers_active} decode remaps per layer over {layers_active} layers; "
            f"distinct experts per layer {before / calls:.1f} -> {after / calls:.1f} "
            f"({100 * (1 - after / max(before, 1)):.0f}% fewer); "
            f"{100 * moved / max(slots, 1):.1f}% of assignments moved")  # fmt: skip


def snapshot() -> dict[str, dict[str, float]]:
    """Per-layer counters of this process: calls remapped, mean distinct experts before/after."""
    out = {}
    for name, state in sorted(layer_state.LAYERS.items(), key=lambda kv: kv[1].index):
        if state.stats is None:
            out[name] = {"layer": state.index, "calls": 0, "before": 0.0, "after": 0.0,
                         "top1_kept": 1.0, "moved_share": 0.0}  # fmt: skip
            continue
        s = state.stats.snapshot()[0]
        out[name] = {"layer": state.index, "calls": s.calls, "before": s.mean_before,
                     "after": s.mean_after, "top1_kept": s.top1_kept_share,
                     "moved_share": s.moved_share(state.facts.top_k)}  # fmt: skip
    return out


def reset() -> None:
    for state in layer_state.LAYERS.values():
        if state.stats is not None:
            state.stats.reset()
    layer_state.DECISIONS.clear()
