# SPDX-License-Identifier: Apache-2.0
"""What a MoE layer's router does, read from vLLM's router object: its scoring, its group limit,
and the routers Lynx must leave stock (and why)."""

from __future__ import annotations

import dataclasses
from typing import Any

from lynx_ops.routing import Scoring

_UNSUPPORTED_ROUTERS = {
    "RoutingSimulatorRouter": "routing simulation replaces the router",
    "ZeroExpertRouter": "zero (identity) experts are not remappable experts",
    "AiterSharedRoutedFusedMoERouter": "shared experts are fused into the routed ids",
}


@dataclasses.dataclass(frozen=True)
class RouterFacts:
    """What the layer's router does, read from the router object itself."""

    kind: str
    num_experts: int
    top_k: int
    scoring: Scoring | None  # None: the router does not say (custom routing function)
    num_expert_group: int  # > 1 only when the router limits tokens to some of the groups
    unsupported: str | None = None


def router_facts(router: Any, num_experts: int, top_k: int) -> RouterFacts:
    kind = type(router).__name__
    if kind in _UNSUPPORTED_ROUTERS:
        return RouterFacts(kind, num_experts, top_k, None, 0, _UNSUPPORTED_ROUTERS[kind])
    if getattr(router, "num_fused_shared_experts", 0):
        return RouterFacts(kind, num_experts, top_k, None, 0, "fused shared experts in the ids")
    if getattr(router, "_hash_indices_table", None) is not None:
        return RouterFacts(kind, num_experts, top_k, None, 0, "hash routing ignores the logits")
    func = getattr(router, "scoring_func", None)
    bias = getattr(router, "e_score_correction_bias", None)
    if func == "softmax":
        scoring = Scoring.SOFTMAX
    elif func == "sigmoid":
        scoring = Scoring.SIGMOID_BIAS if bias is not None else Scoring.SIGMOID
    elif func is None:
        scoring = None
    else:
        return RouterFacts(kind, num_experts, top_k, None, 0, f"scoring_func={func!r}")
    groups = int(getattr(router, "num_expert_group", 0) or 0)
    topk_group = int(getattr(router, "topk_group", 0) or 0)
    limited = groups > 1 and 0 < topk_group < groups
    return RouterFacts(kind, num_experts, top_k, scoring, groups if limited else 0)
