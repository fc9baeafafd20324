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
from collections.abc import Callable
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


_DECODE_OVERRIDE: Callable[[LayerState], Callable[..., Any]] | None = None


def set_decode_override(factory: Callable[[LayerState], Callable[..., Any]] | None) -> None:
    """For benchmarks (lynx_ops.bench.ceiling): `factory(state)` is called for each MoE layer at
    attach and returns what replaces the policy's op in that layer's uniform-decode steps, with
    `LayerState.remap`'s signature and (weights, ids, touched) result; None removes it. Register
    before the model loads (a worker extension's import): captured graphs keep what attach set."""
    global _DECODE_OVERRIDE
    _DECODE_OVERRIDE = factory


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
    if _DECODE_OVERRIDE is not None:
        state.decode_override = _DECODE_OVERRIDE(state)  # raises PolicyError: at load, not mid-run
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
    override = state.decode_override
    if ph.rows is not None and isinstance(num_rows, int) and num_rows == 1 and override is None:
        # One row (batch-1 decode, or its captured graph): the remap is the identity there, so the
        # op would only cost time (on an H100, 0.5 ms a step over 48 layers at batch 1).
        reason = SINGLE_ROW
    elif ph.rows is not None and override is None and state.policy.for_rows(num_rows).kind == "off":
        reason = POLICY_OFF  # fixed per captured graph, as the padded row count is
    DECISIONS[reason] += 1
    if ph.rows is None or reason in (SINGLE_ROW, POLICY_OFF):
        return topk_weights, topk_ids, False
    num_experts = state.facts.num_experts
    logits = router_logits[:num_rows, :num_experts]
    weights, ids, touched = (override or state.remap)(logits, topk_weights, topk_ids, ph.rows)
    if state.stats is None and not (touched.is_cuda and torch.cuda.is_current_stream_capturing()):
        state.stats = ExpertStats(1, touched.device)
    if state.stats is not None:
        state.stats.record(0, touched)
    return weights, ids, True
