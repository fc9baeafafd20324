# SPDX-License-Identifier: Apache-2.0
"""Triton kernels for the `budget` and `keep_k0` policies (`lynx::remap_budget`, `remap_keep`).

One program holds the whole padded batch, as the bins policy's fused path does, and shares its
pieces (kernels/remap.py): `_load_block` (scores, allowed mask, bins), `_block_final` (steps 6-8:
final choice from the kept set, weights, outputs, experts touched). Only the kept set differs:

* keep_k0: each valid row's top-k0 by (score, vanilla, lower index), OR-ed over the rows;
* budget: the experts of the vanilla union ranked by (forced top-1, in the union, batch score,
  lower index), the first L kept, L = max(#forced, min(max(K, 1), ceil(fraction * |union|)));
  the L-th key found bit by bit (`_first_by_key`), lower indices first among equal keys; this
  path takes E <= MAX_POLICY_EXPERTS. K is read from its device tensor, the fraction in float64
  so that the ceiling agrees with the reference's double arithmetic.

All decisions are integer comparisons on values every rank computes identically: no atomics, no
float reductions. Larger batches or routers than this path takes run the reference (the op's
dispatch, lynx_ops.ops).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from lynx_ops.kernels.configs import fused_config
from lynx_ops.kernels.remap import (
    _INT64_MIN,
    _block_final,
    _block_hist,
    _load_block,
    _score_key,
    _sortable,
    _store_touched,
    _whole_batch,
)
from lynx_ops.routing import SIGMOID_BIAS_EPS, TOUCHED_LEN, BatchScore, Scoring, WeightRule

# One program holds T x E scores; beyond this the reference runs (dense, capture-safe).
MAX_POLICY_SCORES = 8192
MAX_POLICY_EXPERTS = 256


@triton.jit
def _keep_kernel(
    x_ptr, sx_t, sx_e, w_ptr, sw_t, sw_k, id_ptr, si_t, si_k, n_ptr, bias_ptr,
    out_w_ptr, out_id_ptr, touched_ptr,
    T, E, scale, group_size,
    K: tl.constexpr, K0: tl.constexpr, SCORING: tl.constexpr, RULE: tl.constexpr,
    GROUPED: tl.constexpr, EPS: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    n, rows, row_ok, valid, cols, col_ok = _whole_batch(n_ptr, T, E, BLOCK_T, BLOCK_E)
    x, s, allowed, d, q, vanilla = _load_block(
        x_ptr, sx_t, sx_e, bias_ptr, id_ptr, si_t, si_k,
        rows, row_ok, cols, col_ok, group_size, 1.0, K, 1, SCORING, GROUPED, EPS,
    )  # fmt: skip
    key = tl.where(allowed, _score_key(s, vanilla, cols), _INT64_MIN)
    own = tl.zeros(key.shape, dtype=tl.int1)
    for _ in tl.static_range(K0):
        best = tl.max(key, axis=1)
        chosen = (key == best[:, None]) & (best[:, None] > _INT64_MIN)
        own = own | chosen
        key = tl.where(chosen, _INT64_MIN, key)
    kept = tl.max((own & valid[:, None]).to(tl.int32), axis=0)
    before, after, top1, moved = _block_final(
        x, s, allowed, vanilla, kept, rows, row_ok, valid, cols, col_ok,
        x_ptr, sx_t, sx_e, w_ptr, sw_t, sw_k, id_ptr, si_t, si_k, out_w_ptr, out_id_ptr,
        E, scale, K, SCORING, RULE, BLOCK_K,
    )  # fmt: skip
    _store_touched(touched_ptr, before, after, top1, n, moved)


@triton.jit
def _first_by_key(key, limit, BITS: tl.constexpr):
    """[BE] int1: the `limit` entries first in the order (larger key, lower index), for keys in
    [0, 2**BITS) (-1 marks padding). The limit-th largest key is found one bit at a time, BITS
    [BE] reductions in place of an [BE, BE] comparison (which spilled: 93 us per call at E=128 on
    the H200, 3a17772); among the keys equal to it the lowest indices go first."""
    t = limit * 0
    for b in tl.static_range(BITS):
        cand = t | (1 << (BITS - 1 - b))
        t = tl.where(tl.sum((key >= cand).to(tl.int32), axis=0) >= limit, cand, t)
    above = key > t
    tie = key == t
    tie_rank = tl.cumsum(tie.to(tl.int32), axis=0) - 1  # equal keys at lower indices
    room = limit - tl.sum(above.to(tl.int32), axis=0)
    return (above | (tie & (tie_rank < room))) & (limit > 0)


@triton.jit
def _budget_kernel(
    x_ptr, sx_t, sx_e, w_ptr, sw_t, sw_k, id_ptr, si_t, si_k, n_ptr, bias_ptr, budget_ptr,
    fraction_ptr, out_w_ptr, out_id_ptr, touched_ptr,
    T, E, alpha, scale, group_size,
    K: tl.constexpr, BETA: tl.constexpr, HIST: tl.constexpr, SCORE_BITS: tl.constexpr,
    SCORING: tl.constexpr, RULE: tl.constexpr, GROUPED: tl.constexpr, EPS: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    n, rows, row_ok, valid, cols, col_ok = _whole_batch(n_ptr, T, E, BLOCK_T, BLOCK_E)
    x, s, allowed, d, q, vanilla = _load_block(
        x_ptr, sx_t, sx_e, bias_ptr, id_ptr, si_t, si_k,
        rows, row_ok, cols, col_ok, group_size, alpha, K, BETA, SCORING, GROUPED, EPS,
    )  # fmt: skip
    chosen = vanilla & valid[:, None]
    in_union = tl.max(chosen.to(tl.int32), axis=0)  # [BE]
    # every valid row's top-1: its vanilla expert of highest score, the lowest index among ties
    k1 = tl.where(vanilla, (_sortable(s) << 10) | (1023 - cols).to(tl.int64)[None, :], _INT64_MIN)
    top1 = k1 == tl.max(k1, axis=1)[:, None]
    forced = tl.max((top1 & chosen).to(tl.int32), axis=0)  # [BE]
    if HIST:  # Lynx's packed histogram: (c[0], ..., c[BETA]) in 12-bit fields, c[0] highest
        score = _block_hist(q, valid, BETA)
    else:  # rows naming the expert among their top-k
        score = tl.sum(chosen.to(tl.int64), axis=0)
    # rank key (forced top-1, in the union, batch score): the score takes SCORE_BITS bits
    rank_key = (forced.to(tl.int64) << (SCORE_BITS + 1)) | (in_union.to(tl.int64) << SCORE_BITS)
    rank_key = tl.where(col_ok, rank_key | score, -1)
    union = tl.sum(in_union, axis=0)
    limit_k = tl.maximum(tl.load(budget_ptr).to(tl.int64), 1)
    limit_f = tl.ceil(tl.load(fraction_ptr) * union.to(tl.float64)).to(tl.int64)
    limit = tl.maximum(tl.minimum(limit_k, limit_f), tl.sum(forced, axis=0).to(tl.int64))
    first = _first_by_key(rank_key, limit, SCORE_BITS + 2)
    kept = (first & (in_union > 0)).to(tl.int32)
    before, after, top1s, moved = _block_final(
        x, s, allowed, vanilla, kept, rows, row_ok, valid, cols, col_ok,
        x_ptr, sx_t, sx_e, w_ptr, sw_t, sw_k, id_ptr, si_t, si_k, out_w_ptr, out_id_ptr,
        E, scale, K, SCORING, RULE, BLOCK_K,
    )  # fmt: skip
    _store_touched(touched_ptr, before, after, top1s, n, moved)


def fits(num_rows: int, num_experts: int) -> bool:
    """Whether the one-program path takes this padded batch."""
    padded = triton.next_power_of_2(max(num_rows, 1)) * triton.next_power_of_2(num_experts)
    return num_experts <= MAX_POLICY_EXPERTS and padded <= MAX_POLICY_SCORES


def _common(scores, topk_weights, topk_ids):
    num_rows, num_experts = scores.shape
    out_w = topk_weights.new_empty(topk_weights.shape)
    out_ids = topk_ids.new_empty(topk_ids.shape)
    touched = topk_ids.new_empty((TOUCHED_LEN,), dtype=torch.int32)
    cfg = fused_config(num_rows, num_experts)  # the bins kernel's one-program launch shape
    args = (scores, scores.stride(0), scores.stride(1), topk_weights, topk_weights.stride(0),
            topk_weights.stride(1), topk_ids, topk_ids.stride(0), topk_ids.stride(1))  # fmt: skip
    meta = dict(BLOCK_T=cfg.block_t, BLOCK_E=triton.next_power_of_2(num_experts),
                BLOCK_K=triton.next_power_of_2(topk_ids.shape[1]), num_warps=cfg.num_warps)  # fmt: skip
    return out_w, out_ids, touched, args, meta


def keep_triton(scores, topk_weights, topk_ids, num_valid, correction_bias, k0, scoring,
                weight_rule, scale, num_expert_group):  # fmt: skip
    """Launch `_keep_kernel`; inputs validated by the op, `fits()` checked by the caller."""
    num_rows, num_experts = scores.shape
    out_w, out_ids, touched, args, meta = _common(scores, topk_weights, topk_ids)
    if num_rows == 0:
        return out_w, out_ids, touched.zero_()
    grouped = num_expert_group > 1
    _keep_kernel[(1,)](
        *args, num_valid, correction_bias if correction_bias is not None else scores,
        out_w, out_ids, touched,
        num_rows, num_experts, float(scale), num_experts // num_expert_group if grouped else 1,
        K=topk_ids.shape[1], K0=int(k0), SCORING=int(Scoring(scoring)),
        RULE=int(WeightRule(weight_rule)), GROUPED=grouped, EPS=SIGMOID_BIAS_EPS, **meta,
    )  # fmt: skip
    return out_w, out_ids, touched


def budget_triton(scores, topk_weights, topk_ids, num_valid, correction_bias, budget, fraction,
                  batch_score, alpha, beta, scoring, weight_rule, scale, num_expert_group):  # fmt: skip
    """Launch `_budget_kernel`; inputs validated by the op, `fits()` checked by the caller."""
    num_rows, num_experts = scores.shape
    out_w, out_ids, touched, args, meta = _common(scores, topk_weights, topk_ids)
    if num_rows == 0:
        return out_w, out_ids, touched.zero_()
    grouped = num_expert_group > 1
    # float64 on the device: the ceiling of fraction * |union| as the reference computes it
    frac = torch.full((1,), float(fraction), dtype=torch.float64, device=scores.device)
    hist = int(batch_score) == BatchScore.HIST
    # the batch score's width: 12-bit histogram fields c[0..beta], or a count of rows < 2**14
    score_bits = 12 * (int(beta) + 1) if hist else MAX_POLICY_SCORES.bit_length()
    _budget_kernel[(1,)](
        *args, num_valid, correction_bias if correction_bias is not None else scores, budget,
        frac, out_w, out_ids, touched,
        num_rows, num_experts, float(alpha), float(scale),
        num_experts // num_expert_group if grouped else 1,
        K=topk_ids.shape[1], BETA=int(beta), HIST=hist, SCORE_BITS=score_bits,
        SCORING=int(Scoring(scoring)), RULE=int(WeightRule(weight_rule)), GROUPED=grouped,
        EPS=SIGMOID_BIAS_EPS, **meta,
    )  # fmt: skip
    return out_w, out_ids, touched
