# SPDX-License-Identifier: Apache-2.0
"""Per-MoE-layer Lynx state in a vLLM worker, and `route()`, the one function every hook calls.

`attach(runner)` runs when vLLM builds a MoE layer: it resolves the model's policy from the
registry, checks it against the layer's router (a mismatch raises at startup, naming both), and
keeps a `LayerState`. `route(state, logits, weights, ids)` runs inside the MoE forward: it asks
`graphs.phase` whether this step is uniform decode and, if so, returns the remapped routing and
adds the experts-touched counts to the layer's device counters.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import re
import threading
from typing import Any

import torch

import lynx_ops  # noqa: F401  (registers torch.ops.lynx.remap)
from lynx_ops.graphs import phase as phase_mod
from lynx_ops.registry import PolicyError, Selection, select_policy
from lynx_ops.registry.policy import Policy
from lynx_ops.routing import Scoring
from lynx_ops.stats import ExpertStats

logger = logging.getLogger("lynx_ops")

_LOCK = threading.Lock()
LAYERS: dict[str, LayerState] = {}
# Host-side decisions (eager steps, warm-ups and captures; a graph replay runs no Python).
DECISIONS: collections.Counter[str] = collections.Counter()
SINGLE_ROW = "single row (the remap is the identity)"
_LOGGED: set[str] = set()
# id(vllm_config) -> (that config, the model's policy selection); the config is held so that its
# id cannot be reused by another one while cached.
_SELECTION: dict[int, tuple[Any, Selection]] = {}

_UNSUPPORTED_ROUTERS = {
    "RoutingSimulatorRouter": "routing simulation replaces the router",
    "ZeroExpertRouter": "zero (identity) experts are not remappable experts",
    "AiterSharedRoutedFusedMoERouter": "shared experts are fused into the routed ids",
}


def log_once(key: str, level: int, msg: str, *args: Any) -> None:
    with _LOCK:
        if key in _LOGGED:
            return
        _LOGGED.add(key)
    logger.log(level, "[lynx] " + msg, *args)


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


@dataclasses.dataclass
class LayerState:
    name: str
    index: int  # the decoder layer number in the name (policy.layers refers to it)
    policy: Policy
    facts: RouterFacts
    router: Any  # the correction bias is read from it at call time (weight loading replaces it)
    vllm_config: Any
    num_speculative_tokens: int
    stats: ExpertStats | None = None
    ceiling: int = 0  # benchmarks only (envs.VLLM_LYNX_CEILING_EXPERTS)
    # The budget policy's K, on the layer's device, one per budget setting (the policy and its
    # per-batch-size settings, by id): read by the op inside captured graphs, so a new value
    # (fill_) applies from the next replay without a new capture.
    budgets: dict[int, torch.Tensor] = dataclasses.field(default_factory=dict)

    @property
    def budget(self) -> torch.Tensor | None:
        """The device scalar of the policy's own (largest-batch) setting, if it is a budget."""
        return self.budgets.get(id(self.policy))

    def op_args(self) -> tuple:
        alpha, beta, scoring, rule, scale, _ = self.policy.op_args()
        return alpha, beta, scoring, rule, scale, self.facts.num_expert_group

    def remap(self, logits, topk_weights, topk_ids, rows):
        """The policy's op on one decode step's routing; the setting follows the padded row count,
        which is fixed per captured graph."""
        p, groups = self.policy.for_rows(topk_ids.shape[0]), self.facts.num_expert_group
        tail = (int(p.scoring), int(p.weight_rule), float(p.scale), groups)
        if p.kind == "budget":
            budget = self.budgets[id(p)]
            if budget.device != logits.device:  # attach() found no parameter to place it by
                budget = self.budgets[id(p)] = budget.to(logits.device)
            return torch.ops.lynx.remap_budget(
                logits, topk_weights, topk_ids, rows, self.bias(), budget, float(p.fraction),
                int(p.batch_score), float(p.alpha), p.beta, *tail,
            )  # fmt: skip
        if p.kind == "keep_k0":
            return torch.ops.lynx.remap_keep(
                logits, topk_weights, topk_ids, rows, self.bias(), p.k0, *tail
            )
        return torch.ops.lynx.remap(
            logits, topk_weights, topk_ids, rows, self.bias(), float(p.alpha), p.beta, *tail
        )

    def bias(self) -> torch.Tensor | None:
        if self.policy.scoring != Scoring.SIGMOID_BIAS:
            return None
        return self.router.e_score_correction_bias


def layer_index(name: str) -> int:
    match = re.search(r"\.(\d+)\.", f".{name}.")
    return int(match.group(1)) if match else 0


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
    policy.check_model(num_experts, top_k)
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
        variant.check_model(num_experts, top_k)
        if variant.kind == "budget":
            state.budgets[id(variant)] = torch.full(
                (1,), variant.budget_value(num_experts), dtype=torch.int32, device=device or "cpu"
            )
    with _LOCK:
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


def _announce(state: LayerState) -> None:
    """The one startup line per engine: family, policy, layers covered, gating mode."""
    if "announce" in _LOGGED:  # cheap exit: this runs on every eager MoE call
        return
    mode = state.vllm_config.compilation_config.cudagraph_mode
    gating, useful = phase_mod.describe_gating(mode)
    covered = sorted(s.index for s in LAYERS.values())
    log_once(
        "announce", logging.INFO,
        "Lynx on: %s; %d MoE layers covered (%s); router %s E=%d k=%d; gating: %s",
        state.policy.describe(), len(covered), _ranges(covered), state.facts.kind,
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
    with _LOCK:
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
            device = next((s.stats.buffer.device for s in LAYERS.values() if s.stats), None)
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
    for state in sorted(LAYERS.values(), key=lambda st: st.index):
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


def _ranges(values: list[int]) -> str:
    if not values:
        return "none"
    out, start, prev = [], values[0], values[0]
    for v in [*values[1:], None]:
        if v is not None and v == prev + 1:
            prev = v
            continue
        out.append(f"{start}-{prev}" if prev != start else f"{start}")
        if v is not None:
            start = prev = v
    return ",".join(out)


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
        _announce(state)
    reason = ph.reason
    num_rows = topk_ids.shape[0]
    if ph.rows is not None and isinstance(num_rows, int) and num_rows == 1 and not state.ceiling:
        # One row (batch-1 decode, or its captured graph): the remap is the identity there, so the
        # op would only cost time (on an H100, 0.5 ms a step over 48 layers at batch 1).
        reason = SINGLE_ROW
    DECISIONS[reason] += 1
    if ph.rows is None or reason == SINGLE_ROW:
        return topk_weights, topk_ids, False
    if state.ceiling:  # k consecutive experts mod K from the row's top-1: distinct, union <= K
        k = topk_ids.shape[1]
        offsets = torch.arange(k, device=topk_ids.device, dtype=topk_ids.dtype)
        return topk_weights, (topk_ids[:, :1] + offsets) % state.ceiling, True
    num_experts = state.facts.num_experts
    logits = router_logits[:num_rows, :num_experts]
    weights, ids, touched = state.remap(logits, topk_weights, topk_ids, ph.rows)
    if state.stats is None and not (touched.is_cuda and torch.cuda.is_current_stream_capturing()):
        state.stats = ExpertStats(1, touched.device)
    if state.stats is not None:
        state.stats.record(0, touched)
    return weights, ids, True


def snapshot() -> dict[str, dict[str, float]]:
    """Per-layer counters of this process: calls remapped, mean distinct experts before/after."""
    out = {}
    for name, state in sorted(LAYERS.items(), key=lambda kv: kv[1].index):
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
    for state in LAYERS.values():
        if state.stats is not None:
            state.stats.reset()
    DECISIONS.clear()
