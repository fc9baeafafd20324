# SPDX-License-Identifier: Apache-2.0
"""Probe for test_features: records, in the engine process, the expert ids vLLM's fused-MoE LoRA
kernels receive (`LoRAExpertsMixin.apply_w13_lora`, called once per MoE layer and forward).
Loaded by lynx_ops.bench.engine_job through the spec's "probe"; needs an eager engine (a replayed
CUDA graph runs no Python)."""

from __future__ import annotations

RECORDS: list[tuple[int, int]] = []  # (rows, distinct expert ids) per call


def install() -> None:
    import torch
    from vllm.model_executor.layers.fused_moe.experts.lora_experts_mixin import LoRAExpertsMixin

    original = LoRAExpertsMixin.apply_w13_lora

    def recording(self, lora_context, *, topk_ids, **kwargs):
        RECORDS.append((int(topk_ids.shape[0]), int(torch.unique(topk_ids).numel())))
        return original(self, lora_context, topk_ids=topk_ids, **kwargs)

    LoRAExpertsMixin.apply_w13_lora = recording


def collect() -> list[tuple[int, int]]:
    out = list(RECORDS)
    RECORDS.clear()
    return out
