# SPDX-License-Identifier: Apache-2.0
"""The per-process registry of covered MoE layers and each layer's `LayerState`: its policy, its
router's facts, its device counters and setting scalars, and `remap`, which calls the policy's op."""

from __future__ import annotations

import collections
import dataclasses
import logging
import re
import threading
from collections.abc import Callable
from typing import Any

import torch

import lynx_ops  # noqa: F401  (registers torch.ops.lynx.*)
from lynx_ops.integration.routers import RouterFacts
from lynx_ops.registry.policy import Policy
from lynx_ops.routing import Scoring
from lynx_ops.stats import ExpertStats

logger = logging.getLogger("lynx_ops")

LOCK = threading.Lock()
LAYERS: dict[str, LayerState] = {}
# Host-side decisions (eager steps, warm-ups and captures; a graph replay runs no Python).
DECISIONS: collections.Counter[str] = collections.Counter()
SINGLE_ROW = "single row (the remap is the identity)"
POLICY_OFF = "policy off at this batch size"
LOGGED: set[str] = set()


def log_once(key: str, level: int, msg: str, *args: Any) -> None:
    with LOCK:
        if key in LOGGED:
            return
        LOGGED.add(key)
    logger.log(level, "[lynx] " + msg, *args)


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
    # A benchmark's replacement of the policy's op in every uniform-decode step (single rows and
    # policy-off sizes included), with remap()'s signature and result; None when serving.
    # Set at attach() by the factory registered with layers.set_decode_override.
    decode_override: Callable[..., Any] | None = None
    # The setting scalars (a budget's K, keep_k0's k0) on the layer's device, one per such
    # setting (the policy and its per-batch-size settings, by id): read by the op inside
    # captured graphs, so a new value (fill_) applies from the next replay without a new capture.
    scalars: dict[int, torch.Tensor] = dataclasses.field(default_factory=dict)

    @property
    def knob(self) -> torch.Tensor | None:
        """The device scalar of the policy's own (largest-batch) setting, if it has one (budget,
        keep_k0): what the TPOT controller turns."""
        return self.scalars.get(id(self.policy))

    def _scalar(self, p: Policy, device) -> torch.Tensor:
        value = self.scalars[id(p)]
        if value.device != device:  # attach() found no parameter to place it by
            value = self.scalars[id(p)] = value.to(device)
        return value

    def remap(self, logits, topk_weights, topk_ids, rows):
        """The policy's op on one decode step's routing; the setting follows the padded row count,
        which is fixed per captured graph."""
        p, groups = self.policy.for_rows(topk_ids.shape[0]), self.facts.num_expert_group
        if p.kind == "off":  # route() bypasses these steps before calling here
            raise RuntimeError(
                f"lynx: remap called for a step its policy turns off ({p.setting()})"
            )
        tail = (int(p.scoring), int(p.weight_rule), float(p.scale), groups)
        if p.kind == "budget":
            return torch.ops.lynx.remap_budget(
                logits, topk_weights, topk_ids, rows, self.bias(), self._scalar(p, logits.device),
                float(p.fraction), int(p.batch_score), float(p.alpha), p.beta, *tail,
            )  # fmt: skip
        if p.kind == "keep_k0":
            return torch.ops.lynx.remap_keep(
                logits, topk_weights, topk_ids, rows, self.bias(), self._scalar(p, logits.device),
                *tail,
            )  # fmt: skip
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
