# SPDX-License-Identifier: Apache-2.0
"""Qwen2-MoE / Qwen1.5-MoE, Qwen3-MoE, Qwen3-Next: softmax top-k routers.

Qwen2-MoE does not renormalise (norm_topk_prob false): the remapped experts keep the row's
probability mass. Qwen3-MoE and Qwen3-Next renormalise. Defaults from the authors' plugin: Qwen2
alpha=3 beta=4; Qwen3 alpha=3 beta=2 (Instruct). Qwen3 Thinking models used alpha=1: their config
is indistinguishable, so set it with a policy file (docs/MODELS.md).

Qwen3-MoE at the Qwen3-30B-A3B / 235B-A22B router shape (128 experts, top-8) instead takes the
settings `lynx-bench choose` picked from the Qwen3-shaped proxy's frontier by the rule of
docs/MODELS.md (fewest experts with decode NLL change <= 1% at each measured batch size):
keep_k0 k0=6 up to 16 rows, keep_k0 k0=5 up to 32, bins alpha=4 beta=4 beyond. On that proxy the
authors' alpha=3 beta=2 costs +4.1% NLL at B=32 (perf/results/frontier_proxy_cpu_5c6395c/).
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


# (B <= 8, 16, 32: keep_k0; above: off): perf/policies/qwen3_proxy_choose_1pct.json, whose
# evidence is perf/results/frontier_proxy_cpu_5c6395c/ and frontier_proxy_conservative_cpu_6bf2f1d/,
# except above 32 rows: there the rule's choice (bins alpha=4 beta=4, +0.38% NLL, 100.1 -> 83.5
# experts at B=64 on the proxy) and the paper's setting both ran slower than stock on the H200
# with the calibrated router (0.99x, 0.97-0.99x; perf/results/offline_qwen3-moe_48L_h200_6f15578_*),
# so those steps keep the router's choice and skip the op.
QWEN3_128X8_BY_BATCH = (
    {"max_batch": 8, "kind": "keep_k0", "k0": 6},  # +0.43% NLL, 45.3 -> 36.2 experts at B=8
    {"max_batch": 16, "kind": "keep_k0", "k0": 6},  # +0.45%, 65.2 -> 54.1 at B=16
    {"max_batch": 32, "kind": "keep_k0", "k0": 5},  # +0.65%, 83.8 -> 65.9 at B=32
)


def _qwen3(config) -> Policy:
    rule = _rule(config, True)
    # the names registry.router_shape reads (transformers 5 saves Qwen3's as num_local_experts)
    experts = cfg(config, "num_experts", "num_local_experts", "n_routed_experts", default=0)
    top_k = cfg(config, "num_experts_per_tok", "experts_per_token", "moe_topk", default=0)
    if (experts, top_k) == (128, 8):
        return Policy("qwen3_moe", alpha=4.0, beta=4, scoring=Scoring.SOFTMAX, weight_rule=rule,
                      kind="off", by_batch=QWEN3_128X8_BY_BATCH)  # fmt: skip
    return Policy("qwen3_moe", alpha=3.0, beta=2, scoring=Scoring.SOFTMAX, weight_rule=rule)


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
