# SPDX-License-Identifier: Apache-2.0
"""Llama 4 (Scout, Maverick): sigmoid top-1 router with a shared expert.

The authors ran beta unbounded; the kernel caps it at MAX_BETA (4): with alpha=1 the fifth bin
below the top is already 4 logits down, where a sigmoid router's choice carries next to no weight.
The remapped expert's weight is its sigmoid rescaled to the vanilla weight (PRESERVE_MASS).
"""

from lynx_ops.registry.families._base import Family
from lynx_ops.registry.policy import Policy
from lynx_ops.routing import MAX_BETA, Scoring, WeightRule


def _llama4(config) -> Policy:
    return Policy("llama4", alpha=1.0, beta=MAX_BETA, scoring=Scoring.SIGMOID,
                  weight_rule=WeightRule.PRESERVE_MASS)  # fmt: skip


FAMILIES = [
    Family(
        "llama4",
        ("llama4", "llama4_text"),
        ("Llama4ForConditionalGeneration", "Llama4ForCausalLM"),
        _llama4,
    )
]
