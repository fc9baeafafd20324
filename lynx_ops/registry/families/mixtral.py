# SPDX-License-Identifier: Apache-2.0
"""Mixtral: 8 experts, top-2, softmax renormalised. The authors used alpha=0.7 for 8x7B and alpha=1
for 8x22B (told apart by hidden_size: 4096 vs 6144), beta=1 for both."""

from lynx_ops.registry.families._base import Family, cfg
from lynx_ops.registry.policy import Policy


def _mixtral(config) -> Policy:
    alpha = 1.0 if cfg(config, "hidden_size", default=4096) >= 6144 else 0.7
    return Policy("mixtral", alpha=alpha, beta=1)


FAMILIES = [Family("mixtral", ("mixtral",), ("MixtralForCausalLM",), _mixtral)]
