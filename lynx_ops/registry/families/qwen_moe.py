# SPDX-License-Identifier: Apache-2.0
"""Qwen2-MoE / Qwen1.5-MoE, Qwen3-MoE, Qwen3-Next: softmax top-k routers.

Qwen2-MoE does not renormalise (norm_topk_prob false): the remapped experts keep the row's
probability mass. Qwen3-MoE and Qwen3-Next renormalise. Defaults from the authors' plugin: Qwen2
alpha=3 beta=4; Qwen3 alpha=3 beta=2 (Instruct). Qwen3 Thinking models used alpha=1: their config
is indistinguishable, so set it with a policy file (docs/MODELS.md).
"""

from lynx_ops.registry.families._base import Family, cfg
from lynx_ops.registry.policy import Policy
from lynx_ops.routing import Scoring, WeightRule


def _rule(config, default_norm: bool) -> WeightRule:
    norm = cfg(config, "norm_topk_prob", default=default_norm)
    return WeightRule.RENORMALIZE if norm else WeightRule.PRESERVE_MASS


def _qwen2(config) -> Policy:
    return Policy("qwen2_moe", alpha=3.0, beta=4, scoring=Scoring.SOFTMAX,
                  weight_rule=_rule(config, False))  # fmt: skip


def _qwen3(config) -> Policy:
    return Policy("qwen3_moe", alpha=3.0, beta=2, scoring=Scoring.SOFTMAX,
                  weight_rule=_rule(config, True))  # fmt: skip


def _qwen3_next(config) -> Policy:
    return Policy("qwen3_next", alpha=3.0, beta=2, scoring=Scoring.SOFTMAX,
                  weight_rule=_rule(config, True))  # fmt: skip


FAMILIES = [
    Family("qwen2_moe", ("qwen2_moe",), ("Qwen2MoeForCausalLM",), _qwen2),
    Family("qwen3_moe", ("qwen3_moe",), ("Qwen3MoeForCausalLM",), _qwen3),
    Family(
        "qwen3_next",
        ("qwen3_next",),
        ("Qwen3NextForCausalLM",),
        _qwen3_next,
        note="routes like Qwen3-MoE (softmax top-k, renormalised)",
    ),
]
