# SPDX-License-Identifier: Apache-2.0
"""GPT-OSS: top-k of the logits, then softmax over the chosen ones (= RENORMALIZE).
Default alpha=3, beta=2 (the authors' GPT-OSS-120B setting)."""

from lynx_ops.registry.families._base import Family
from lynx_ops.registry.policy import Policy


def _gpt_oss(config) -> Policy:
    return Policy("gpt_oss", alpha=3.0, beta=2)


FAMILIES = [
    Family(
        "gpt_oss",
        ("gpt_oss",),
        ("GptOssForCausalLM",),
        _gpt_oss,
        note="MXFP4 weights use a monolithic kernel that skips the router",
    )
]
