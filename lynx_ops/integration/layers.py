# SPDX-License-Identifier: Apache-2.0
"""`attach()` and `route()`, the two functions every hook calls.

`attach(runner)` runs when vLLM builds a MoE layer: it resolves the model's policy from the
registry, checks it against the layer's router (a mismatch raises at startup, naming both), and
keeps a `LayerState` (layer_state.py). `route(state, logits, weights, ids)` runs inside the MoE
forward: it asks `graphs.phase` whether this step is uniform decode and, if so, returns the
remapped routing and adds the experts-touched counts to the layer's device counters. The router
facts live in routers.py, the startup line and the stats thread in telemetry.py.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from lynx_ops.graphs import phase as phase_mod
from lynx_ops.integration import layer_state
from lynx_ops.integration.layer_state import (  # noqa: F401  (the names the hooks and benches use)
    DECISIONS,
    LAYERS,
    POLICY_OFF,
    SINGLE_ROW,
    LayerState,
    layer_index,
    log_once,
)
from lynx_ops.integration.routers import RouterFacts, router_facts  # noqa: F401
from lynx_ops.integration.telemetry import (  # noqa: F401
    announce,
    counters,
    reset,
    snapshot,
    stats_line,
)
from lynx_ops.registry import PolicyError, Selection, select_policy
from lynx_ops.stats import ExpertStats

# id(vllm_config) -> (that config, the model's policy selection); the config is held so that its
# id cannot be reused by another one while cached.
_SELECTION: dict[int, tuple[Any, Selection]] = {}


def _hf_config(vllm_config: Any) -> Any:
    model_config = vllm_config.model_config
    return getattr(model_config, "hf_text_config", None) or model_config.hf_config


def model_selection(vllm_config: Any) -> Selection:
    """The policy for the model being built (once per engine config); PolicyError propagates."""
    cached = _SELECTION.get(id(vllm_config))
    if cached is None or cached[0] is not vllm_config:
        cached = (vllm_config, select_policy(_hf_config(vllm_config)))
        _SELECTION[id(vllm_config)] = cached
    return cached[1]


def attach(runner: Any, vllm_config: Any) -> LayerState | None:
    """Resolve and check the policy for one MoE layer; None when Lynx leaves it stock (logged)."""
    selection = model_selection(vllm_config)
    if selection.policy is None:
        log_once(
            "no-policy", logging.WARNING, "Lynx stays off for this model: %s", selection.reason
        )
        return None
    policy = selection.policy
    moe = runner.moe_config
    num_experts = int(getattr(moe, "num_logical_experts", 0) or moe.num_experts)
    top_k = int(moe.experts_per_token)
    facts = router_facts(runner.router, num_experts, top_k)
    name = runner.layer_name
    if facts.unsupported:
        log_once(f"router-{facts.kind}", logging.WARNING,
                 "Lynx leaves layers with %s stock: %s", facts.kind, facts.unsupported)  # fmt: skip
        return None
    if facts.scoring is not None and facts.scoring != policy.scoring:
        raise PolicyError(
            f"policy '{policy.family}' [{policy.source}] has scoring={policy.scoring.name.lower()}, "
            f"but layer {name} routes with {facts.kind} (scoring "
            f"{facts.scoring.name.lower()}); fix the policy's 'scoring'"
        )
    for variant in policy.variants():  # the per-batch-size settings too
        variant.check_model(num_experts, top_k)
    spread = _token_spread(moe)
    if spread:
        log_once("token-spread", logging.WARNING,
                 "Lynx leaves MoE layers stock under %s: the router sees tokens of other ranks, "
                 "whose valid-row count this rank cannot read", spread)  # fmt: skip
        return None
    index = layer_index(name)
    if not policy.applies_to_layer(index):
        return None
    spec = getattr(vllm_config, "speculative_config", None)
    state = LayerState(
        name=name, index=index, policy=policy, facts=facts, router=runner.router,
        vllm_config=vllm_config,
        num_speculative_tokens=int(getattr(spec, "num_speculative_tokens", 0) or 0),
    )  # fmt: skip
    from lynx_ops import envs

    state.ceiling = envs.VLLM_LYNX_CEILING_EXPERTS
    if state.ceiling and not top_k <= state.ceiling <= num_experts:
        raise PolicyError(
            f"VLLM_LYNX_CEILING_EXPERTS={state.ceiling} must be in [k={top_k}, E={num_experts}]"
        )
    if state.ceiling:
        log_once("ceiling", logging.WARNING,
                 "benchmark ceiling mode: decode steps route each token to k consecutive experts mod %d "
                 "(VLLM_LYNX_CEILING_EXPERTS); outputs are not meaningful", state.ceiling)  # fmt: skip
    device = _device_of(runner)
    if device is not None:  # allocate now: never inside a graph capture
        state.stats = ExpertStats(1, device)
    for variant in policy.variants():
        value = variant.setting_value(num_experts)
        if value is not None:
            state.scalars[id(variant)] = torch.full(
                (1,), value, dtype=torch.int32, device=device or "cpu"
            )
    with layer_state.LOCK:
        LAYERS[name] = state
    return state


def _token_spread(moe: Any) -> str | None:
    """Why the rows the router sees are not this rank's batch (data/context/sequence parallel)."""
    if int(getattr(moe, "dp_size", 1) or 1) > 1:
        return "data parallelism"
    if int(getattr(moe, "pcp_size", 1) or 1) > 1:
        return "prefill context parallelism"
    if getattr(moe, "is_sequence_parallel", False):
        return "sequence-parallel MoE"
    return None


def _device_of(runner: Any) -> torch.device | None:
    for param in runner.parameters():
        return None if param.device.type == "meta" else param.device
    return None


def route(
    state: LayerState,
    router_logits: torch.Tensor,
    topk_weights: torch.Tensor,
    topk_ids: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """(weights, ids, remapped): the Lynx routing for a uniform-decode step, else the input."""
    mode = state.vllm_config.compilation_config.cudagraph_mode
    ph = phase_mod.current_phase(mode, state.num_speculative_tokens)
    if ph.reason not in (phase_mod.PROFILE, phase_mod.NO_CONTEXT):
        announce(state)
    reason = ph.reason
    num_rows = topk_ids.shape[0]
    if ph.rows is not None and isinstance(num_rows, int) and num_rows == 1 and not state.ceiling:
        # One row (batch-1 decode, or its captured graph): the remap is the identity there, so the
        # op would only cost time (on an H100, 0.5 ms a step over 48 layers at batch 1).
        reason = SINGLE_ROW
    elif (
        ph.rows is not None and not state.ceiling and state.policy.for_rows(num_rows).kind == "off"
    ):
        reason = POLICY_OFF  # fixed per captured graph, as the padded row count is
    DECISIONS[reason] += 1
    if ph.rows is None or reason in (SINGLE_ROW, POLICY_OFF):
        return topk_weights, topk_ids, False
    if state.ceiling:
        ids, touched = ceiling_routing(topk_ids, state.ceiling, ph.rows, state.facts.num_experts)
        _record(state, touched)
        return topk_weights, ids, True
    num_experts = state.facts.num_experts
    logits = router_logits[:num_rows, :num_experts]
    weights, ids, touched = state.remap(logits, topk_weights, topk_ids, ph.rows)
    _record(state, touched)
    return weights, ids, True


def _record(state: LayerState, touched: torch.Tensor) -> None:
    if state.stats is None and not (touched.is_cuda and torch.cuda.is_current_stream_capturing()):
        state.stats = ExpertStats(1, touched.device)
    if state.stats is not None:
        state.stats.record(0, touched)


def ceiling_routing(
    topk_ids: torch.Tensor, ceiling: int, rows: torch.Tensor, num_experts: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The benchmark ceiling (VLLM_LYNX_CEILING_EXPERTS=K): each row's k consecutive experts mod K
    from its top-1, so a layer reads at most K experts; and the op's `touched` counters for it.
    A ceiling's step touches fewer than K experts where B x k does not cover K (8 rows of k = 4 on
    K = 40: about 23), so the benchmark reads the count, not K, as the ceiling's expert count.
    Device ops only ([1] `rows` on the device): captured with the step."""
    num_rows, k = topk_ids.shape
    offsets = torch.arange(k, device=topk_ids.device, dtype=topk_ids.dtype)
    ids = (topk_ids[:, :1] + offsets) % ceiling
    valid = torch.arange(num_rows, device=topk_ids.device) < rows
    chosen = torch.zeros(num_rows, num_experts, dtype=torch.bool, device=topk_ids.device)
    chosen.scatter_(1, topk_ids.long(), True)
    used = torch.zeros_like(chosen).scatter_(1, ids.long(), True)
    keeps_top1 = used.gather(1, topk_ids[:, :1].long())[:, 0] & valid
    touched = torch.stack(
        [
            (chosen & valid[:, None]).any(dim=0).sum(),
            (used & valid[:, None]).any(dim=0).sum(),
            keeps_top1.sum(),
            valid.sum(),
            (used & ~chosen & valid[:, None]).sum(),
        ]
    ).to(torch.int32)
    return ids, touched
