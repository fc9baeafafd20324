# SPDX-License-Identifier: Apache-2.0
"""`LynxMoERunner`: vLLM's MoERunner with the layer's routing passed through Lynx."""

from __future__ import annotations

import logging

from vllm.config import get_current_vllm_config
from vllm.model_executor.layers.fused_moe.runner.moe_runner import MoERunner
from vllm.platforms import current_platform

from lynx_ops.integration import cpu_routing, layers

_ON_CPU = current_platform.is_cpu()


def wrap_router(router, state: layers.LayerState) -> None:
    """Route this router instance's top-k through Lynx: `BaseRouter._select_experts` calls
    `_compute_routing` (the family's top-k), then the routed-experts capture, the EPLB map and the
    dtype cast; overriding it on the instance puts the remap on logical ids before all three."""
    compute_routing = router._compute_routing

    def lynx_compute_routing(hidden_states, router_logits, indices_type, *, input_ids=None):
        weights, ids = compute_routing(
            hidden_states, router_logits, indices_type, input_ids=input_ids
        )
        weights, ids, _ = layers.route(state, router_logits, weights, ids)
        return weights, ids

    router._compute_routing = lynx_compute_routing


class LynxMoERunner(MoERunner):
    """Registered with `MoERunner.register_oot`, so every FusedMoE layer vLLM builds is one."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._lynx = layers.attach(self, get_current_vllm_config())
        if self._lynx is None or _ON_CPU:
            return  # CPU experts route in cpu_fused_moe.select_experts (cpu_routing.py)
        wrap_router(self.router, self._lynx)

    def _forward_impl(self, *args, **kwargs):
        if self._lynx is not None and not _ON_CPU and self.is_monolithic:
            layers.log_once(
                "monolithic", logging.WARNING,
                "Lynx cannot act on %s: its expert kernel is monolithic and skips the router "
                "(e.g. GPT-OSS MXFP4 on Hopper). Serve with --moe-backend marlin or "
                "--moe-backend triton_unfused to route through the router.",
                self.layer_name,
            )  # fmt: skip
        if self._lynx is None or not _ON_CPU:
            return super()._forward_impl(*args, **kwargs)
        # On CPU, Dynamo traces this; the layer in force is a trace-time constant for the
        # select_experts wrapper (cpu_routing.py).
        previous = cpu_routing.ACTIVE.layer
        cpu_routing.ACTIVE.layer = self.layer_name
        try:
            return super()._forward_impl(*args, **kwargs)
        finally:
            cpu_routing.ACTIVE.layer = previous
