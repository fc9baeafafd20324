# SPDX-License-Identifier: Apache-2.0
"""Triton kernels for the `budget` and `keep_k0` policies (`lynx::remap_budget`, `remap_keep`).

They share the bins policy's pieces (kernels/remap.py): `_load_block` (scores, allowed mask,
bins), `_block_final` / `_final_rows` (steps 6-8: final choice from the kept set, weights, outputs,
experts touched) and its launch shapes (kernels/configs.py). Only the kept set differs:

* keep_k0: each valid row's top-k0 by (score, vanilla, lower index), OR-ed over the rows;
* budget: the experts of the vanilla union ranked by (forced top-1, in the union, batch score,
  lower index), the first L kept, L = max(#forced, min(max(K, 1), ceil(fraction * |union|)));
  the L-th key found bit by bit (`_first_by_key`), lower indices first among equal keys. K is read
  from its device tensor, the fraction in float64 so that the ceiling agrees with the reference's
  double arithmetic.

Two launch shapes, as for bins: one program over the whole padded batch (small T), or split over
blocks of rows (large T): launch 1 writes each block's partials (keep: its kept set; budget: its
union, forced top-1s and batch score), launch 2 sums them in a fixed order and runs the final
choice per block (keep_k0 runs the bins policy's `_final_rows`; budget computes its kept set from
the sums in every block, the same integers everywhere). keep_k0 at k0 = k, the identity rung of a
k0 ladder, copies the vanilla routing out and counts `touched` without loading a score: a
selection that changes no row cost as much as one at k0 = 4 (H200, 0ee8d21).

All decisions are integer comparisons on values every rank computes identically: no atomics but
the finished-block counter, no float reductions. Batches past the packed keys' bounds
(routing.packed_keys_fit) run the reference (the op's dispatch, lynx_ops.ops).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from lynx_ops.kernels.configs import LaunchConfig, launch_config
from lynx_ops.kernels.remap import (
    _INT64_MIN,
    _block_final,
    _block_hist,
    _final_rows,
    _load_block,
    _num_valid,
    _reduce_touched,
    _score_key,
    _sortable,
    _split_rows,
    _store_touched,
    _sum_partials,
    _whole_batch,
    split_buffers,
)
from lynx_ops.routing import (
    MAX_KERNEL_ROWS,
    SIGMOID_BIAS_EPS,
    TOUCHED_LEN,
    BatchScore,
    Scoring,
    WeightRule,
)


@triton.jit
def _keep_set(s, allowed, vanilla, valid, cols, k0_ptr, K: tl.constexpr):
    """[BE] int32: 1 for experts among some valid row's top-k0 (by score, vanilla, lower index).
    k0 is read from the device (clamped to [1, K]), so a captured graph replays a new value; the
    loop runs k0 times, not K, so a smaller k0 costs less."""
    k0 = _keep_k0(k0_ptr, K)
    key = tl.where(allowed, _score_key(s, vanilla, cols), _INT64_MIN)
    own = tl.zeros(key.shape, dtype=tl.int1)
    for _ in range(k0):
        best = tl.max(key, axis=1)
        chosen = (key == best[:, None]) & (best[:, None] > _INT64_MIN)
        own = own | chosen
        key = tl.where(chosen, _INT64_MIN, key)
    return tl.max((own & valid[:, None]).to(tl.int32), axis=0)


@triton.jit
def _keep_k0(k0_ptr, K: tl.constexpr):
    """k0 from the device, clamped to [1, K] (reference.keep_ref)."""
    return tl.minimum(tl.maximum(tl.load(k0_ptr).to(tl.int32), 1), K)


@triton.jit
def _identity_rows(w_ptr, sw_t, sw_k, id_ptr, si_t, si_k, out_w_ptr, out_id_ptr,
                   rows, row_ok, valid, cols, K: tl.constexpr, BLOCK_K: tl.constexpr):  # fmt: skip
    """keep_k0 at k0 = k: the block's vanilla ids and weights copied out (padding rows too), with
    no scores loaded and no selection run. Returns [BE] int32: the experts its valid rows use."""
    kcols = tl.arange(0, BLOCK_K)
    mk = row_ok[:, None] & (kcols < K)[None, :]
    v_ids = tl.load(id_ptr + rows[:, None] * si_t + kcols[None, :] * si_k, mask=mk, other=0)
    v_w = tl.load(w_ptr + rows[:, None] * sw_t + kcols[None, :] * sw_k, mask=mk, other=0.0)
    out_off = rows[:, None] * K + kcols[None, :]
    tl.store(out_id_ptr + out_off, v_ids, mask=mk)
    tl.store(out_w_ptr + out_off, v_w, mask=mk)
    used = tl.zeros([rows.shape[0], cols.shape[0]], dtype=tl.int1)
    for j in tl.static_range(K):
        vid = tl.load(id_ptr + rows * si_t + j * si_k, mask=valid, other=-1).to(tl.int32)
        used = used | (cols[None, :] == vid[:, None])
    return tl.max(used.to(tl.int32), axis=0)


@triton.jit
def _budget_parts(s, q, vanilla, valid, cols, BETA: tl.constexpr, HIST: tl.constexpr):
    """[BE] each, over this block's valid rows: in the vanilla union (int32), someone's top-1
    (int32), the batch score (int64; packed histogram or count, both sum across blocks)."""
    chosen = vanilla & valid[:, None]
    in_union = tl.max(chosen.to(tl.int32), axis=0)
    # every valid row's top-1: its vanilla expert of highest score, the lowest index among ties
    k1 = tl.where(vanilla, (_sortable(s) << 10) | (1023 - cols).to(tl.int64)[None, :], _INT64_MIN)
    top1 = k1 == tl.max(k1, axis=1)[:, None]
    forced = tl.max((top1 & chosen).to(tl.int32), axis=0)
    if HIST:  # Lynx's packed histogram: (c[0], ..., c[BETA]) in 12-bit fields, c[0] highest
        score = _block_hist(q, valid, BETA)
    else:  # rows naming the expert among their top-k
        score = tl.sum(chosen.to(tl.int64), axis=0)
    return in_union, forced, score


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
def _budget_kept(in_union, forced, score, col_ok, budget_ptr, fraction_ptr,
                 SCORE_BITS: tl.constexpr):  # fmt: skip
    """[BE] int32: the first L experts of the union by (forced, in union, score, lower index)."""
    rank_key = (forced.to(tl.int64) << (SCORE_BITS + 1)) | (in_union.to(tl.int64) << SCORE_BITS)
    rank_key = tl.where(col_ok, rank_key | score, -1)
    union = tl.sum(in_union, axis=0)
    limit_k = tl.maximum(tl.load(budget_ptr).to(tl.int64), 1)
    limit_f = tl.ceil(tl.load(fraction_ptr) * union.to(tl.float64)).to(tl.int64)
    limit = tl.maximum(tl.minimum(limit_k, limit_f), tl.sum(forced, axis=0).to(tl.int64))
    first = _first_by_key(rank_key, limit, SCORE_BITS + 2)
    return (first & (in_union > 0)).to(tl.int32)


@triton.jit
def _keep_kernel(
    x_ptr, sx_t, sx_e, w_ptr, sw_t, sw_k, id_ptr, si_t, si_k, n_ptr, bias_ptr, k0_ptr,
    out_w_ptr, out_id_ptr, touched_ptr,
    T, E, scale, group_size,
    K: tl.constexpr, SCORING: tl.constexpr, RULE: tl.constexpr,
    GROUPED: tl.constexpr, EPS: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    """keep_k0, whole batch in one program."""
    n, rows, row_ok, valid, cols, col_ok = _whole_batch(n_ptr, T, E, BLOCK_T, BLOCK_E)
    if _keep_k0(k0_ptr, K) >= K:  # the identity rung: a copy, not a selection that changes nothing
        used = _identity_rows(w_ptr, sw_t, sw_k, id_ptr, si_t, si_k, out_w_ptr, out_id_ptr,
                              rows, row_ok, valid, cols, K, BLOCK_K)  # fmt: skip
        _store_touched(touched_ptr, used, used, n, n, n * 0)
    else:
        x, s, allowed, d, q, vanilla = _load_block(
            x_ptr, sx_t, sx_e, bias_ptr, id_ptr, si_t, si_k,
            rows, row_ok, cols, col_ok, group_size, 1.0, K, 1, SCORING, GROUPED, EPS,
        )  # fmt: skip
        kept = _keep_set(s, allowed, vanilla, valid, cols, k0_ptr, K)
        before, after, top1, moved = _block_final(
            x, s, allowed, vanilla, kept, rows, row_ok, valid, cols, col_ok,
            x_ptr, sx_t, sx_e, w_ptr, sw_t, sw_k, id_ptr, si_t, si_k, out_w_ptr, out_id_ptr,
            E, scale, K, SCORING, RULE, BLOCK_K,
        )  # fmt: skip
        _store_touched(touched_ptr, before, after, top1, n, moved)


@triton.jit
def _keep_partial_kernel(
    x_ptr, sx_t, sx_e, id_ptr, si_t, si_k, n_ptr, bias_ptr, k0_ptr, kept_ptr, counter_ptr,
    T, E, group_size,
    K: tl.constexpr, SCORING: tl.constexpr, GROUPED: tl.constexpr,
    EPS: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_E: tl.constexpr,
):  # fmt: skip
    """keep_k0 split, launch 1 of 2: this block's kept set into kept[pid] (nothing at k0 = k,
    where launch 2 copies the vanilla routing)."""
    if _keep_k0(k0_ptr, K) < K:
        pid, rows, valid, cols, x, s, allowed, d, q, vanilla = _split_rows(
            x_ptr, sx_t, sx_e, bias_ptr, id_ptr, si_t, si_k, n_ptr, T, E, group_size, 1.0,
            K, 1, SCORING, GROUPED, EPS, BLOCK_T, BLOCK_E,
        )  # fmt: skip
        kept = _keep_set(s, allowed, vanilla, valid, cols, k0_ptr, K)
        tl.store(kept_ptr + pid * BLOCK_E + cols, kept.to(tl.int8))
    if tl.program_id(0) == 0:  # launch 2 counts finished blocks here; one stream runs in order
        tl.store(counter_ptr, 0)


@triton.jit
def _keep_final_kernel(
    x_ptr, sx_t, sx_e, w_ptr, sw_t, sw_k, id_ptr, si_t, si_k, n_ptr, bias_ptr, k0_ptr,
    kept_ptr, before_ptr, after_ptr, top1_ptr, moved_ptr, counter_ptr,
    out_w_ptr, out_id_ptr, touched_ptr,
    T, E, P, scale, group_size,
    K: tl.constexpr, SCORING: tl.constexpr, RULE: tl.constexpr,
    GROUPED: tl.constexpr, EPS: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_K: tl.constexpr, CHUNK: tl.constexpr,
):  # fmt: skip
    """keep_k0 split, launch 2 of 2: the kept set from the blocks' partials (OR) and the bins
    policy's final choice, or at k0 = k the vanilla routing copied; `touched` either way."""
    cols = tl.arange(0, BLOCK_E)
    if _keep_k0(k0_ptr, K) >= K:
        pid = tl.program_id(0)
        n = _num_valid(n_ptr, T)
        rows = pid * BLOCK_T + tl.arange(0, BLOCK_T)
        valid = rows < n
        used = _identity_rows(w_ptr, sw_t, sw_k, id_ptr, si_t, si_k, out_w_ptr, out_id_ptr,
                              rows, rows < T, valid, cols, K, BLOCK_K)  # fmt: skip
        _reduce_touched(used, used, tl.sum(valid.to(tl.int32), axis=0), n * 0, pid, n, cols,
                        before_ptr, after_ptr, top1_ptr, moved_ptr, counter_ptr, touched_ptr, P,
                        BLOCK_E, CHUNK)  # fmt: skip
    else:
        kept = _sum_partials(kept_ptr, P, cols, BLOCK_E, CHUNK, False)
        _final_rows(
            kept, x_ptr, sx_t, sx_e, w_ptr, sw_t, sw_k, id_ptr, si_t, si_k, n_ptr, bias_ptr,
            before_ptr, after_ptr, top1_ptr, moved_ptr, counter_ptr, out_w_ptr, out_id_ptr,
            touched_ptr, T, E, P, 1.0, scale, group_size,
            K, 1, SCORING, RULE, GROUPED, EPS, BLOCK_T, BLOCK_E, BLOCK_K, CHUNK,
        )  # fmt: skip


@triton.jit
def _budget_kernel(
    x_ptr, sx_t, sx_e, w_ptr, sw_t, sw_k, id_ptr, si_t, si_k, n_ptr, bias_ptr, budget_ptr,
    fraction_ptr, out_w_ptr, out_id_ptr, touched_ptr,
    T, E, alpha, scale, group_size,
    K: tl.constexpr, BETA: tl.constexpr, HIST: tl.constexpr, SCORE_BITS: tl.constexpr,
    SCORING: tl.constexpr, RULE: tl.constexpr, GROUPED: tl.constexpr, EPS: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    """budget, whole batch in one program."""
    n, rows, row_ok, valid, cols, col_ok = _whole_batch(n_ptr, T, E, BLOCK_T, BLOCK_E)
    x, s, allowed, d, q, vanilla = _load_block(
        x_ptr, sx_t, sx_e, bias_ptr, id_ptr, si_t, si_k,
        rows, row_ok, cols, col_ok, group_size, alpha, K, BETA, SCORING, GROUPED, EPS,
    )  # fmt: skip
    in_union, forced, score = _budget_parts(s, q, vanilla, valid, cols, BETA, HIST)
    kept = _budget_kept(in_union, forced, score, col_ok, budget_ptr, fraction_ptr, SCORE_BITS)
    before, after, top1s, moved = _block_final(
        x, s, allowed, vanilla, kept, rows, row_ok, valid, cols, col_ok,
        x_ptr, sx_t, sx_e, w_ptr, sw_t, sw_k, id_ptr, si_t, si_k, out_w_ptr, out_id_ptr,
        E, scale, K, SCORING, RULE, BLOCK_K,
    )  # fmt: skip
    _store_touched(touched_ptr, before, after, top1s, n, moved)


@triton.jit
def _budget_partial_kernel(
    x_ptr, sx_t, sx_e, id_ptr, si_t, si_k, n_ptr, bias_ptr, parts_ptr, counter_ptr,
    T, E, P, alpha, group_size,
    K: tl.constexpr, BETA: tl.constexpr, HIST: tl.constexpr, SCORING: tl.constexpr,
    GROUPED: tl.constexpr, EPS: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_E: tl.constexpr,
):  # fmt: skip
    """budget split, launch 1 of 2: this block's union, forced top-1s and batch score into
    parts[0..2][pid]."""
    pid, rows, valid, cols, x, s, allowed, d, q, vanilla = _split_rows(
        x_ptr, sx_t, sx_e, bias_ptr, id_ptr, si_t, si_k, n_ptr, T, E, group_size, alpha,
        K, BETA, SCORING, GROUPED, EPS, BLOCK_T, BLOCK_E,
    )  # fmt: skip
    in_union, forced, score = _budget_parts(s, q, vanilla, valid, cols, BETA, HIST)
    plane = P * BLOCK_E
    tl.store(parts_ptr + pid * BLOCK_E + cols, in_union.to(tl.int64))
    tl.store(parts_ptr + plane + pid * BLOCK_E + cols, forced.to(tl.int64))
    tl.store(parts_ptr + 2 * plane + pid * BLOCK_E + cols, score)
    if pid == 0:  # launch 2 counts finished blocks here; launches on one stream run in order
        tl.store(counter_ptr, 0)


@triton.jit
def _budget_final_kernel(
    x_ptr, sx_t, sx_e, w_ptr, sw_t, sw_k, id_ptr, si_t, si_k, n_ptr, bias_ptr, budget_ptr,
    fraction_ptr, parts_ptr, before_ptr, after_ptr, top1_ptr, moved_ptr, counter_ptr,
    out_w_ptr, out_id_ptr, touched_ptr,
    T, E, P, alpha, scale, group_size,
    K: tl.constexpr, BETA: tl.constexpr, SCORE_BITS: tl.constexpr, SCORING: tl.constexpr,
    RULE: tl.constexpr, GROUPED: tl.constexpr, EPS: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_K: tl.constexpr, CHUNK: tl.constexpr,
):  # fmt: skip
    """budget split, launch 2 of 2: the batch's kept set from the summed partials (every block
    computes the same integers), then the final choice for this block."""
    cols = tl.arange(0, BLOCK_E)
    plane = P * BLOCK_E
    in_union = (_sum_partials(parts_ptr, P, cols, BLOCK_E, CHUNK, False) > 0).to(tl.int32)
    forced = (_sum_partials(parts_ptr + plane, P, cols, BLOCK_E, CHUNK, False) > 0).to(tl.int32)
    score = _sum_partials(parts_ptr + 2 * plane, P, cols, BLOCK_E, CHUNK, False)
    kept = _budget_kept(in_union, forced, score, cols < E, budget_ptr, fraction_ptr, SCORE_BITS)
    _final_rows(
        kept, x_ptr, sx_t, sx_e, w_ptr, sw_t, sw_k, id_ptr, si_t, si_k, n_ptr, bias_ptr,
        before_ptr, after_ptr, top1_ptr, moved_ptr, counter_ptr, out_w_ptr, out_id_ptr,
        touched_ptr, T, E, P, alpha, scale, group_size,
        K, BETA, SCORING, RULE, GROUPED, EPS, BLOCK_T, BLOCK_E, BLOCK_K, CHUNK,
    )  # fmt: skip


def _common(scores, topk_weights, topk_ids, config):
    num_rows, num_experts = scores.shape
    out_w = topk_weights.new_empty(topk_weights.shape)
    out_ids = topk_ids.new_empty(topk_ids.shape)
    touched = topk_ids.new_empty((TOUCHED_LEN,), dtype=torch.int32)
    cfg = config or launch_config(num_rows, num_experts, topk_ids.shape[1])
    args = (scores, scores.stride(0), scores.stride(1), topk_weights, topk_weights.stride(0),
            topk_weights.stride(1), topk_ids, topk_ids.stride(0), topk_ids.stride(1))  # fmt: skip
    meta = dict(BLOCK_T=cfg.block_t, BLOCK_E=triton.next_power_of_2(num_experts),
                num_warps=cfg.num_warps)  # fmt: skip
    return out_w, out_ids, touched, cfg, args, meta


def keep_triton(scores, topk_weights, topk_ids, num_valid, correction_bias, k0, scoring,
                weight_rule, scale, num_expert_group, config: LaunchConfig | None = None):  # fmt: skip
    """Launch the keep_k0 kernels; inputs validated by the op, the packed keys' bounds
    (routing.packed_keys_fit) checked by the caller.
    `config` overrides the launch shape (tests exercise both paths with it)."""
    num_rows, num_experts = scores.shape
    out_w, out_ids, touched, cfg, args, meta = _common(scores, topk_weights, topk_ids, config)
    if num_rows == 0:
        return out_w, out_ids, touched.zero_()
    grouped = num_expert_group > 1
    group_size = num_experts // num_expert_group if grouped else 1
    bias = correction_bias if correction_bias is not None else scores
    k = topk_ids.shape[1]
    block_k = triton.next_power_of_2(k)
    common = dict(K=k, SCORING=int(Scoring(scoring)), GROUPED=grouped, EPS=SIGMOID_BIAS_EPS, **meta)
    if cfg.fused:
        assert cfg.block_t >= num_rows, "a one-program launch needs the whole batch in one block"
        _keep_kernel[(1,)](
            *args, num_valid, bias, k0, out_w, out_ids, touched,
            num_rows, num_experts, float(scale), group_size,
            RULE=int(WeightRule(weight_rule)), BLOCK_K=block_k, **common,
        )  # fmt: skip
        return out_w, out_ids, touched
    blocks, chunk, masks, counter, top1, moved = split_buffers(
        num_rows, num_experts, cfg.block_t, scores.device
    )  # fmt: skip
    x_args, id_args = args[:3], args[6:]
    _keep_partial_kernel[(blocks,)](
        *x_args, *id_args, num_valid, bias, k0, masks[0], counter,
        num_rows, num_experts, group_size, **common,
    )  # fmt: skip
    _keep_final_kernel[(blocks,)](
        *args, num_valid, bias, k0, masks[0], masks[1], masks[2], top1, moved, counter,
        out_w, out_ids, touched,
        num_rows, num_experts, blocks, float(scale), group_size,
        RULE=int(WeightRule(weight_rule)), BLOCK_K=block_k, CHUNK=chunk, **common,
    )  # fmt: skip
    return out_w, out_ids, touched


def budget_triton(scores, topk_weights, topk_ids, num_valid, correction_bias, budget, fraction,
                  batch_score, alpha, beta, scoring, weight_rule, scale, num_expert_group,
                  config: LaunchConfig | None = None):  # fmt: skip
    """Launch the budget kernels; inputs validated by the op, the packed keys' bounds
    (routing.packed_keys_fit) checked by the caller.
    `config` overrides the launch shape (tests exercise both paths with it)."""
    num_rows, num_experts = scores.shape
    out_w, out_ids, touched, cfg, args, meta = _common(scores, topk_weights, topk_ids, config)
    if num_rows == 0:
        return out_w, out_ids, touched.zero_()
    grouped = num_expert_group > 1
    group_size = num_experts // num_expert_group if grouped else 1
    bias = correction_bias if correction_bias is not None else scores
    k = topk_ids.shape[1]
    block_k = triton.next_power_of_2(k)
    # float64 on the device: the ceiling of fraction * |union| as the reference computes it
    frac = torch.full((1,), float(fraction), dtype=torch.float64, device=scores.device)
    hist = int(batch_score) == BatchScore.HIST
    # the batch score's width: 12-bit histogram fields c[0..beta], or a count of rows
    score_bits = 12 * (int(beta) + 1) if hist else MAX_KERNEL_ROWS.bit_length()
    common = dict(K=k, BETA=int(beta), SCORING=int(Scoring(scoring)), GROUPED=grouped,
                  EPS=SIGMOID_BIAS_EPS, **meta)  # fmt: skip
    if cfg.fused:
        assert cfg.block_t >= num_rows, "a one-program launch needs the whole batch in one block"
        _budget_kernel[(1,)](
            *args, num_valid, bias, budget, frac, out_w, out_ids, touched,
            num_rows, num_experts, float(alpha), float(scale), group_size,
            HIST=hist, SCORE_BITS=score_bits, RULE=int(WeightRule(weight_rule)), BLOCK_K=block_k,
            **common,
        )  # fmt: skip
        return out_w, out_ids, touched
    blocks, chunk, masks, counter, top1, moved = split_buffers(
        num_rows, num_experts, cfg.block_t, scores.device
    )  # fmt: skip
    parts = torch.empty((3, blocks, meta["BLOCK_E"]), dtype=torch.int64, device=scores.device)
    x_args, id_args = args[:3], args[6:]
    _budget_partial_kernel[(blocks,)](
        *x_args, *id_args, num_valid, bias, parts, counter,
        num_rows, num_experts, blocks, float(alpha), group_size, HIST=hist, **common,
    )  # fmt: skip
    _budget_final_kernel[(blocks,)](
        *args, num_valid, bias, budget, frac, parts, masks[1], masks[2], top1, moved, counter,
        out_w, out_ids, touched,
        num_rows, num_experts, blocks, float(alpha), float(scale), group_size,
        SCORE_BITS=score_bits, RULE=int(WeightRule(weight_rule)), BLOCK_K=block_k, CHUNK=chunk,
        **common,
    )  # fmt: skip
    return out_w, out_ids, touched
