# SPDX-License-Identifier: Apache-2.0
"""`LynxMoERunner`: vLLM's MoERunner with the layer's routing passed through Lynx."""

from __future__ import annotations

import logging

from vllm.config import get_current_vllm_config
from vllm.model_executor.layers.fused_moe.runner.moe_runner import MoERunner
from vllm.platforms import current_platform

from lynx_ops.integration import cpu_routing, layers

_ON_CPU = current_platform.is_cpu()


def packed_rows(router_logits, layer: str):
    """The router logits with rows packed (row stride E). Inductor may pad the rows of the gate's
    output ([T, 60] with row stride 64 for Qwen1.5-MoE), and vLLM 0.26's CUDA topk_softmax reads
    rows as packed, so its ids are then the top-k of the wrong scores (vllm-project/vllm#56900)
    while the remap reads the real ones by stride: every row would look moved. One [T, E] copy
    makes the two agree; strides are fixed per compiled graph, so this decides once per shape."""
    if router_logits.dim() != 2 or router_logits.stride(0) == router_logits.shape[1]:
        return router_logits
    layers.log_once(
        "padded-logits", logging.WARNING,
        "router logits of %s arrive with padded rows (shape %s, strides %s); vLLM's top-k reads "
        "rows as packed (vllm-project/vllm#56900), so with Lynx on the router's top-k runs on a "
        "packed copy: the routing follows the real logits, where stock vLLM's does not",
        layer, tuple(router_logits.shape), tuple(router_logits.stride()),
    )  # fmt: skip
    return router_logits.contiguous()


def wrap_router(router, state: layers.LayerState) -> None:
    """Route this router instance's top-k through Lynx: `BaseRouter._select_experts` calls
    `_compute_routing` (the family's top-k), then the routed-experts capture, the EPLB map and the
    dtype cast; overriding it on the instance puts the remap on logical ids before all three."""
    compute_routing = router._compute_routing

    def lynx_compute_routing(hidden_states, router_logits, indices_type, *, input_ids=None):
        weights, ids = compute_routing(
            hidden_states, packed_rows(router_logits, state.name), indices_type,
            input_ids=input_ids,
        )  # fmt: skip
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
