# SPDX-License-Identifier: Apache-2.0
"""The benchmark ceiling: every MoE layer forced onto at most K experts in decode steps.

`VLLM_LYNX_CEILING_EXPERTS=K` (with `VLLM_LYNX_ENABLED=1`, in an engine whose worker extension is
`lynx_ops.bench.worker_ext.LynxBenchWorker`, as `lynx-bench offline` starts its engines) replaces
the policy's op in every uniform-decode step by k consecutive experts mod K from each row's top-1:
distinct per row, at most K per batch. That is the best step time any remap could reach at that
expert count, the reference of the mechanism efficiency (docs/PERFORMANCE.md). Outputs are
meaningless. It plugs in through `layers.set_decode_override`, so serving's routing step carries no
benchmark branch.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from lynx_ops import envs
from lynx_ops.integration import layers
from lynx_ops.registry import PolicyError


def ceiling_routing(
    topk_ids: torch.Tensor, ceiling: int, rows: torch.Tensor, num_experts: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's k consecutive experts mod K from its top-1, and the op's `touched` counters for
    them. A ceiling's step touches fewer than K experts where B x k does not cover K (8 rows of
    k = 4 on K = 40: about 23), so `lynx-bench offline` reads the count, not K, as the ceiling's
    expert count. Device ops only ([1] `rows` on the device): captured with the step."""
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


def ceiling_override(ceiling: int):
    """The `layers.set_decode_override` factory for a K-expert ceiling: checks K against each
    layer at attach (k <= K <= E, else PolicyError at load) and returns its decode step."""

    def factory(state: Any):
        num_experts, top_k = state.facts.num_experts, state.facts.top_k
        if not top_k <= ceiling <= num_experts:
            raise PolicyError(
                f"VLLM_LYNX_CEILING_EXPERTS={ceiling} must be in [k={top_k}, E={num_experts}]"
            )
        layers.log_once("ceiling", logging.WARNING,
                        "benchmark ceiling mode: decode steps route each token to k consecutive "
                        "experts mod %d (VLLM_LYNX_CEILING_EXPERTS); outputs are not meaningful",
                        ceiling)  # fmt: skip

        def step(logits, topk_weights, topk_ids, rows):
            ids, touched = ceiling_routing(topk_ids, ceiling, rows, num_experts)
            return topk_weights, ids, touched

        return step

    return factory


def install_from_env() -> None:
    """Register the ceiling when VLLM_LYNX_CEILING_EXPERTS is set (worker_ext's import, in each
    worker before the model loads); otherwise leave the routing step as it is."""
    ceiling = envs.VLLM_LYNX_CEILING_EXPERTS
    if ceiling:
        layers.set_decode_override(ceiling_override(ceiling))
