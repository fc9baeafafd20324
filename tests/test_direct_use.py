# SPDX-License-Identifier: Apache-2.0
"""Direct use without vLLM: a custom MoE layer calls torch.ops.lynx.remap in its own forward.

This is the pattern docs/MODELS.md ("Using the op in your own model") shows. The layer must give the
same output compiled (fullgraph) and eager, and that output must be the MoE computed with the
reference's remapped routing.
"""

from __future__ import annotations

import torch

import lynx_ops
from lynx_ops.reference import remap_ref


class TinyMoE(torch.nn.Module):
    """Softmax top-k router, renormalised (Qwen3-MoE style), experts as [E, H, H] matrices."""

    def __init__(self, hidden: int = 32, num_experts: int = 16, top_k: int = 4) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.gate = torch.nn.Parameter(torch.randn(num_experts, hidden, generator=g) * 0.5)
        self.experts = torch.nn.Parameter(torch.randn(num_experts, hidden, hidden, generator=g))
        self.top_k = top_k

    def forward(self, h: torch.Tensor, num_valid: torch.Tensor, decode: bool) -> torch.Tensor:
        logits = h @ self.gate.T  # [T, E]
        top_logits, ids = logits.topk(self.top_k, dim=1)
        weights = top_logits.softmax(dim=1)
        if decode:  # remap only in decode steps; num_valid is a device tensor (no host sync)
            weights, ids, _touched = lynx_ops.ops.remap(
                logits, weights, ids, num_valid, None,
                3.0, 2, int(lynx_ops.Scoring.SOFTMAX), int(lynx_ops.WeightRule.RENORMALIZE),
                1.0, 0,
            )  # fmt: skip
        out = torch.einsum("th,tkhd->tkd", h, self.experts[ids])  # [T, k, H]
        return (weights[..., None] * out).sum(dim=1)


def test_custom_layer_compiled_equals_eager_and_reference():
    torch.manual_seed(1)
    layer = TinyMoE()
    h = torch.randn(24, 32)
    n = torch.tensor([20], dtype=torch.int32)
    eager = layer(h, n, True)
    compiled = torch.compile(layer, fullgraph=True)(h, n, True)
    torch.testing.assert_close(compiled, eager)

    logits = h @ layer.gate.T
    top_logits, ids = logits.topk(4, dim=1)
    w, new_ids, touched = remap_ref(logits, top_logits.softmax(dim=1), ids, n, None,
                                    3.0, 2, 0, 0, 1.0, 0)  # fmt: skip
    want = (w[..., None] * torch.einsum("th,tkhd->tkd", h, layer.experts[new_ids])).sum(dim=1)
    torch.testing.assert_close(eager, want)
    assert touched[1] < touched[0], "the example batch should use fewer experts after the remap"
    # prefill path untouched
    torch.testing.assert_close(layer(h, n, False), _stock(layer, h))


def _stock(layer: TinyMoE, h: torch.Tensor) -> torch.Tensor:
    logits = h @ layer.gate.T
    top_logits, ids = logits.topk(4, dim=1)
    out = torch.einsum("th,tkhd->tkd", h, layer.experts[ids])
    return (top_logits.softmax(dim=1)[..., None] * out).sum(dim=1)
