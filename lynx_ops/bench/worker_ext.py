# SPDX-License-Identifier: Apache-2.0
"""Worker methods for benchmarks against `vllm serve`.

    VLLM_SERVER_DEV_MODE=1 vllm serve DIR --worker-extension-cls lynx_ops.bench.worker_ext.LynxBenchWorker
    curl -X POST localhost:8000/collective_rpc -d '{"method": "lynx_rescale_gates", "args": ["2", "1", "0"]}'

vLLM's dev-mode `/collective_rpc` passes arguments as strings. Nothing here is loaded unless named.
"""

from __future__ import annotations

from typing import Any


class LynxBenchWorker:
    def lynx_rescale_gates(self, spread: str, skew: str, seed: str = "0") -> dict[str, Any]:
        from lynx_ops.bench import router_realism

        return router_realism.rescale_gates(self, float(spread), float(skew), int(seed))

    def lynx_snapshot(self) -> dict[str, Any]:
        from lynx_ops import plugin
        from lynx_ops.integration import layers

        if not plugin._STATE["installed"]:
            return {}
        return layers.snapshot()

    def lynx_reset(self) -> None:
        from lynx_ops import plugin
        from lynx_ops.integration import layers

        if plugin._STATE["installed"]:
            layers.reset()
