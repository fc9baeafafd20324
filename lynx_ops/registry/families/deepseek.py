# SPDX-License-Identifier: Apache-2.0
"""DeepSeek V2 (softmax, optionally group-limited) and V3 (sigmoid + correction bias, grouped).

Grouped routers keep each remapped expert inside the groups the router already chose for the row
(reference.vanilla_group_mask). Weights use PRESERVE_MASS: the remapped experts' probabilities are
rescaled to the vanilla row's weight sum. For a renormalising router that sum is exactly the factor
the router applied (1, or routed_scaling_factor where the router applies it), so the result equals
"normalise, times the router's factor" without depending on where vLLM applies that factor.
Defaults: alpha=1, beta=2 (the authors' DeepSeek-Coder-V2 setting).
"""

from lynx_ops.registry.families._base import Family, cfg
from lynx_ops.registry.policy import Policy
from lynx_ops.routing import Scoring, WeightRule


def _groups(config) -> int:
    method = cfg(config, "topk_method", default="greedy")
    n_group = int(cfg(config, "n_group", default=1) or 1)
    return n_group if method in ("group_limited_greedy", "noaux_tc") and n_group > 1 else 0


def _deepseek(config) -> Policy:
    sigmoid = cfg(config, "scoring_func", default="softmax") == "sigmoid"
    if sigmoid and cfg(config, "topk_method", default="") == "noaux_tc":
        scoring = Scoring.SIGMOID_BIAS
    else:
        scoring = Scoring.SIGMOID if sigmoid else Scoring.SOFTMAX
    family = "deepseek_v3" if scoring == Scoring.SIGMOID_BIAS else "deepseek_v2"
    return Policy(family, alpha=1.0, beta=2, scoring=scoring,
                  weight_rule=WeightRule.PRESERVE_MASS, num_expert_group=_groups(config))  # fmt: skip


FAMILIES = [
    Family("deepseek_v2", ("deepseek_v2",), ("DeepseekV2ForCausalLM",), _deepseek),
    Family("deepseek_v3", ("deepseek_v3", "kimi_k2"), ("DeepseekV3ForCausalLM",), _deepseek),
]
