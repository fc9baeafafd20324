# SPDX-License-Identifier: Apache-2.0
"""The CPU backend's routing path: `cpu_fused_moe.select_experts`, wrapped.

vLLM's CPU experts are monolithic: they call `cpu_fused_moe.select_experts(...)` instead of the
layer's router, and on CPU the MoE forward is plain Python that Dynamo traces into the compiled
graph. So the wrapper emits `torch.ops.lynx.vllm_route`, an opaque op: its fake implementation is
what Dynamo sees, and its real one runs every step (there are no CUDA graphs on CPU), where it reads
the forward context to decide decode vs prefill. The layer is known at trace time from
`ACTIVE.layer`, which LynxMoERunner._forward_impl sets around the layer's forward.
"""

from __future__ import annotations

import torch

from lynx_ops.integration import layers

_lib = torch.library.Library("lynx", "FRAGMENT")
_lib.define(
    "vllm_route(Tensor router_logits, Tensor topk_weights, Tensor topk_ids, str layer) "
    "-> (Tensor, Tensor)"
)


class _Active:
    layer: str | None = None


ACTIVE = _Active()
_STOCK = None


def _vllm_route(router_logits, topk_weights, topk_ids, layer: str):
    state = layers.LAYERS.get(layer)
    if state is not None:
        weights, ids, remapped = layers.route(state, router_logits, topk_weights, topk_ids)
        if remapped:
            return weights, ids
    # Outputs of an op may not alias its inputs.
    return topk_weights.clone(), topk_ids.clone()


def _vllm_route_fake(router_logits, topk_weights, topk_ids, layer: str):
    return topk_weights.new_empty(topk_weights.shape), topk_ids.new_empty(topk_ids.shape)


_lib.impl("vllm_route", _vllm_route, "CPU")
_lib.impl("vllm_route", _vllm_route, "CUDA")
torch.library.register_fake("lynx::vllm_route", _vllm_route_fake, lib=_lib)


def select_experts(*args, **kwargs):
    """Same signature and result as vLLM's; adds the remap for the layer in force."""
    topk_weights, topk_ids = _STOCK(*args, **kwargs)
    layer = ACTIVE.layer
    if layer is None or layer not in layers.LAYERS:
        return topk_weights, topk_ids
    router_logits = kwargs["router_logits"] if "router_logits" in kwargs else args[1]
    return torch.ops.lynx.vllm_route(router_logits, topk_weights, topk_ids, layer)


def install() -> None:
    global _STOCK
    from vllm.model_executor.layers.fused_moe import cpu_fused_moe

    if cpu_fused_moe.select_experts is select_experts:
        return
    _STOCK = cpu_fused_moe.select_experts
    cpu_fused_moe.select_experts = select_experts
