# SPDX-License-Identifier: Apache-2.0
"""Worker-side helpers for benchmarks: read and reset Lynx's per-layer counters, re-draw gates.

Module functions take the worker as first argument, for `LLM.collective_rpc(fn)`. Against
`vllm serve`, the same come as methods of `LynxBenchWorker`:

    VLLM_SERVER_DEV_MODE=1 vllm serve DIR --worker-extension-cls lynx_ops.bench.worker_ext.LynxBenchWorker
    curl -X POST localhost:8000/collective_rpc -d '{"method": "lynx_rescale_gates", "args": ["2", "1", "0"]}'

vLLM's dev-mode `/collective_rpc` passes arguments as strings. Nothing here is loaded unless named.
vLLM imports a worker extension in each worker before the model loads, so importing this module
also registers the `lynx_dummy` load format there (lynx_ops.bench.dummy_loader) and, where
VLLM_LYNX_CEILING_EXPERTS is set, the benchmark ceiling (lynx_ops.bench.ceiling).
"""

from __future__ import annotations

import statistics
from typing import Any

from lynx_ops.bench import ceiling, dummy_loader  # dummy_loader registers the lynx_dummy format

ceiling.install_from_env()  # VLLM_LYNX_CEILING_EXPERTS: before the model loads, as attach needs


def lynx_snapshot(worker: Any) -> dict[str, dict[str, float]]:
    """Per-layer counters of this worker (layers.snapshot()); {} when Lynx is not installed."""
    from lynx_ops import plugin

    if not plugin.is_installed():
        return {}
    from lynx_ops.integration import layers

    return layers.snapshot()


def lynx_reset(worker: Any) -> None:
    from lynx_ops import plugin

    if plugin.is_installed():
        from lynx_ops.integration import layers

        layers.reset()


def summarize(snapshot: dict[str, dict[str, float]]) -> dict[str, float]:
    """Means over the layers that remapped: experts before/after, top-1 kept share, calls."""
    active = [v for v in snapshot.values() if v["calls"]]
    if not active:
        return {}
    return {
        "experts_before": statistics.mean(v["before"] for v in active),
        "experts_after": statistics.mean(v["after"] for v in active),
        "top1_kept": statistics.mean(v["top1_kept"] for v in active),
        "moved_share": statistics.mean(v.get("moved_share", 0.0) for v in active),
        "remap_calls_per_layer": statistics.mean(v["calls"] for v in active),
    }


class LynxBenchWorker:
    def lynx_router_drawn(self) -> dict[str, Any]:
        """What the `lynx_dummy` load drew in this worker ({} for another load format)."""
        return dummy_loader.last_draw()

    def lynx_rescale_gates(self, spread: str, skew: str, seed: str = "0") -> dict[str, Any]:
        from lynx_ops.bench import router_realism

        return router_realism.rescale_gates(self, float(spread), float(skew), int(seed))

    def lynx_snapshot(self) -> dict[str, Any]:
        return lynx_snapshot(self)

    def lynx_decisions(self) -> dict[str, int]:
        """Lynx's host-side routing decisions by reason since the last reset (eager steps and
        graph captures; a graph replay runs no Python); {} when Lynx is not installed."""
        from lynx_ops import plugin

        if not plugin.is_installed():
            return {}
        from lynx_ops.integration import layers

        return dict(layers.DECISIONS)

    def lynx_reset(self) -> None:
        lynx_reset(self)
