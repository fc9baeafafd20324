# SPDX-License-Identifier: Apache-2.0
"""Triton kernel for `lynx::remap` and its launcher.

One launch, one program. The remap needs two batch-wide reductions (the bin histogram, then the
union of the rows' candidates) before any row's final choice is known; a single program holds both
in registers, so there is no scratch memory, no atomics (the result is bitwise deterministic on every
GPU and tensor-parallel rank) and no second launch. The program walks the rows in blocks, three
passes:

  A. bins and the packed histogram over valid rows (and the experts the vanilla choice touches);
  B. each valid row's k candidates by (bin, histogram, own gap), OR-ed into the kept set;
  C. each row's k best experts by score inside the kept set, weights, output, experts touched.

The valid-row count is read on the device, so a CUDA graph captured at padded size T replays
correctly for any n <= T; passes A and B loop only to n. The grid is (1,) whatever the data.

Packed histogram: bin j (q = -j) of expert e counts in bits [12*(BETA-j), 12*(BETA-j)+12) of an
int64, so comparing packed values compares the count vectors (c0, c1, ..., cBETA)
lexicographically. The candidate key puts (q + BETA) above it at bit 60. The reference votes with
the leave-one-out histogram; this kernel uses the full one. Both give the same order: experts are
only compared within one bin q, and removing the voting row subtracts 1 from the same column of
every expert in that bin.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from lynx_ops.kernels.configs import launch_config
from lynx_ops.routing import SIGMOID_BIAS_EPS, Scoring, WeightRule

_NEG_INF = tl.constexpr(float("-inf"))  # globals used in @triton.jit must be constexpr


@triton.jit
def _load_scores(
    x_ptr, sx_t, sx_e, bias_ptr, id_ptr, si_t, si_k,
    rows, row_ok, cols, col_ok, group_size,
    K: tl.constexpr, SCORING: tl.constexpr, GROUPED: tl.constexpr, EPS: tl.constexpr,
):  # fmt: skip
    """Raw logits x, selection scores s (-inf where not allowed) and the allowed mask, [BT, BE]."""
    m2 = row_ok[:, None] & col_ok[None, :]
    x = tl.load(x_ptr + rows[:, None] * sx_t + cols[None, :] * sx_e, mask=m2, other=0.0)
    x = x.to(tl.float32)
    if SCORING == 2:  # SIGMOID_BIAS: logit(clamp(sigmoid(x) + b))
        b = tl.load(bias_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
        p = 1.0 / (1.0 + tl.exp(-x)) + b[None, :]
        p = tl.minimum(tl.maximum(p, EPS), 1.0 - EPS)
        s = tl.log(p) - tl.log(1.0 - p)
    else:
        s = x
    allowed = m2
    if GROUPED:  # only groups the vanilla choice already uses (see reference.vanilla_group_mask)
        in_group = tl.zeros_like(m2)
        for j in tl.static_range(K):
            vid = tl.load(id_ptr + rows * si_t + j * si_k, mask=row_ok, other=0).to(tl.int32)
            in_group = in_group | ((cols[None, :] // group_size) == (vid // group_size)[:, None])
        allowed = allowed & in_group
    s = tl.where(allowed, s, _NEG_INF)
    return x, s, allowed


@triton.jit
def _bins(s, allowed, alpha, BETA: tl.constexpr):
    """Gap d to the row's best expert and its bin q in {0..-BETA}; -(BETA+1) where not allowed."""
    m = tl.max(s, axis=1)
    m = tl.where(m == _NEG_INF, 0.0, m)  # rows with nothing allowed (masked rows): no inf - inf
    d = s - m[:, None]
    q = tl.maximum(tl.ceil(alpha * d), -BETA).to(tl.int32)
    q = tl.where(allowed, q, -(BETA + 1))
    return d, q


@triton.jit
def _lynx_remap_kernel(
    x_ptr, sx_t, sx_e,
    w_ptr, sw_t, sw_k,
    id_ptr, si_t, si_k,
    n_ptr, bias_ptr,
    out_w_ptr, out_id_ptr, touched_ptr,
    T, E, alpha, scale, group_size,
    K: tl.constexpr, BETA: tl.constexpr, SCORING: tl.constexpr, RULE: tl.constexpr,
    GROUPED: tl.constexpr, EPS: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    n = tl.load(n_ptr).to(tl.int32)
    n = tl.minimum(tl.maximum(n, 0), T)
    cols = tl.arange(0, BLOCK_E)
    col_ok = cols < E
    kcols = tl.arange(0, BLOCK_K)
    k_ok = kcols < K

    # ---- pass A: packed histogram of bins over valid rows; experts the vanilla choice touches.
    hist = tl.zeros([BLOCK_E], dtype=tl.int64)
    touched_before = tl.zeros([BLOCK_E], dtype=tl.int32)
    for t0 in range(0, n, BLOCK_T):
        rows = t0 + tl.arange(0, BLOCK_T)
        valid = rows < n
        x, s, allowed = _load_scores(
            x_ptr, sx_t, sx_e, bias_ptr, id_ptr, si_t, si_k,
            rows, valid, cols, col_ok, group_size, K, SCORING, GROUPED, EPS,
        )  # fmt: skip
        d, q = _bins(s, allowed, alpha, BETA)
        field = (12 * (BETA + q)).to(tl.int64)
        one = tl.full([BLOCK_T, BLOCK_E], 1, dtype=tl.int64)
        hist += tl.sum(tl.where(valid[:, None] & (q >= -BETA), one << field, 0), axis=0)
        for j in tl.static_range(K):
            vid = tl.load(id_ptr + rows * si_t + j * si_k, mask=valid, other=-1).to(tl.int32)
            hit = (vid[:, None] == cols[None, :]) & valid[:, None]
            touched_before = tl.maximum(touched_before, tl.max(hit.to(tl.int32), axis=0))

    # ---- pass B: each valid row votes for its k best experts by (bin, histogram, own gap).
    kept = tl.zeros([BLOCK_E], dtype=tl.int32)
    for t0 in range(0, n, BLOCK_T):
        rows = t0 + tl.arange(0, BLOCK_T)
        valid = rows < n
        x, s, allowed = _load_scores(
            x_ptr, sx_t, sx_e, bias_ptr, id_ptr, si_t, si_k,
            rows, valid, cols, col_ok, group_size, K, SCORING, GROUPED, EPS,
        )  # fmt: skip
        d, q = _bins(s, allowed, alpha, BETA)
        key = tl.where(allowed, ((BETA + q).to(tl.int64) << 60) | hist[None, :], -1)
        for _ in tl.static_range(K):
            best_key = tl.max(key, axis=1)
            tie = key == best_key[:, None]
            best_d = tl.max(tl.where(tie, d, _NEG_INF), axis=1)
            tie = tie & (d == best_d[:, None])
            pick = tl.min(tl.where(tie, cols[None, :], BLOCK_E), axis=1)
            chosen = cols[None, :] == pick[:, None]
            kept = tl.maximum(kept, tl.max((chosen & valid[:, None]).to(tl.int32), axis=0))
            key = tl.where(chosen, -2, key)

    # ---- pass C: final choice inside the kept set, weights, output for every row (padding too).
    touched_after = tl.zeros([BLOCK_E], dtype=tl.int32)
    for t0 in range(0, T, BLOCK_T):
        rows = t0 + tl.arange(0, BLOCK_T)
        row_ok = rows < T
        valid = rows < n
        x, s, allowed = _load_scores(
            x_ptr, sx_t, sx_e, bias_ptr, id_ptr, si_t, si_k,
            rows, row_ok, cols, col_ok, group_size, K, SCORING, GROUPED, EPS,
        )  # fmt: skip
        s_kept = tl.where(kept[None, :] > 0, s, _NEG_INF)
        # -1 in the padded columns (k not a power of two) so they never match a vanilla id
        new_ids = tl.full([BLOCK_T, BLOCK_K], -1, dtype=tl.int32)
        new_x = tl.zeros([BLOCK_T, BLOCK_K], dtype=tl.float32)
        for i in tl.static_range(K):
            best = tl.max(s_kept, axis=1)
            pick = tl.min(tl.where(s_kept == best[:, None], cols[None, :], BLOCK_E), axis=1)
            chosen = cols[None, :] == pick[:, None]
            x_pick = tl.sum(tl.where(chosen, x, 0.0), axis=1)
            new_ids = tl.where(kcols[None, :] == i, pick[:, None], new_ids)
            new_x = tl.where(kcols[None, :] == i, x_pick[:, None], new_x)
            s_kept = tl.where(chosen, _NEG_INF, s_kept)

        mk = row_ok[:, None] & k_ok[None, :]
        v_ids = tl.load(id_ptr + rows[:, None] * si_t + kcols[None, :] * si_k, mask=mk, other=0)
        v_w = tl.load(w_ptr + rows[:, None] * sw_t + kcols[None, :] * sw_k, mask=mk, other=0.0)

        # Same expert set as vanilla? Then the row keeps the vanilla ids and weights bit for bit.
        found = tl.max((new_ids[:, :, None] == v_ids.to(tl.int32)[:, None, :]).to(tl.int32), axis=1)
        found = tl.where(k_ok[None, :], found, 1)
        changed = valid & (tl.min(found, axis=1) == 0)

        # Weights of the final experts with the family's rule (ALGORITHM.md step 7).
        x_sel = tl.where(k_ok[None, :], new_x, _NEG_INF)
        if SCORING == 0:
            if RULE == 2:  # full-softmax probability
                m_all = tl.max(tl.where(col_ok[None, :], x, _NEG_INF), axis=1)
                z_all = tl.sum(tl.where(col_ok[None, :], tl.exp(x - m_all[:, None]), 0.0), axis=1)
                p = tl.exp(x_sel - m_all[:, None]) / z_all[:, None]
            else:
                e = tl.exp(x_sel - tl.max(x_sel, axis=1)[:, None])
                p = e / tl.sum(e, axis=1)[:, None]
        else:
            p = tl.where(k_ok[None, :], 1.0 / (1.0 + tl.exp(-new_x)), 0.0)
            if RULE != 2:
                p = p / tl.sum(p, axis=1)[:, None]
        if RULE == 1:  # preserve the vanilla row's weight mass
            p = p * tl.sum(v_w.to(tl.float32), axis=1)[:, None]
        else:
            p = p * scale

        out_ids = tl.where(changed[:, None], new_ids.to(v_ids.dtype), v_ids)
        out_w = tl.where(changed[:, None], p.to(v_w.dtype), v_w)
        out_off = rows[:, None] * K + kcols[None, :]
        tl.store(out_id_ptr + out_off, out_ids, mask=mk)
        tl.store(out_w_ptr + out_off, out_w, mask=mk)

        for j in tl.static_range(K):
            oid = tl.sum(tl.where(kcols[None, :] == j, out_ids, 0), axis=1).to(tl.int32)
            hit = (oid[:, None] == cols[None, :]) & valid[:, None]
            touched_after = tl.maximum(touched_after, tl.max(hit.to(tl.int32), axis=0))

    tl.store(touched_ptr, tl.sum(touched_before, axis=0))
    tl.store(touched_ptr + 1, tl.sum(touched_after, axis=0))


def remap_triton(
    scores: torch.Tensor,
    topk_weights: torch.Tensor,
    topk_ids: torch.Tensor,
    num_valid: torch.Tensor,
    correction_bias: torch.Tensor | None,
    alpha: float,
    beta: int,
    scoring: int,
    weight_rule: int,
    scale: float,
    num_expert_group: int,
):
    """Launch the kernel. Inputs are validated by the op; no host synchronisation happens here."""
    num_rows, num_experts = scores.shape
    k = topk_ids.shape[1]
    out_w = topk_weights.new_empty(topk_weights.shape)
    out_ids = topk_ids.new_empty(topk_ids.shape)
    touched = topk_ids.new_empty((2,), dtype=torch.int32)
    if num_rows == 0:
        touched.zero_()
        return out_w, out_ids, touched
    grouped = num_expert_group > 1
    cfg = launch_config(num_rows, num_experts, k)
    _lynx_remap_kernel[(1,)](
        scores, scores.stride(0), scores.stride(1),
        topk_weights, topk_weights.stride(0), topk_weights.stride(1),
        topk_ids, topk_ids.stride(0), topk_ids.stride(1),
        num_valid, correction_bias if correction_bias is not None else scores,
        out_w, out_ids, touched,
        num_rows, num_experts, float(alpha), float(scale),
        num_experts // num_expert_group if grouped else 1,
        K=k, BETA=int(beta), SCORING=int(Scoring(scoring)), RULE=int(WeightRule(weight_rule)),
        GROUPED=grouped, EPS=SIGMOID_BIAS_EPS,
        BLOCK_T=cfg.block_t, BLOCK_E=triton.next_power_of_2(num_experts),
        BLOCK_K=triton.next_power_of_2(k), num_warps=cfg.num_warps,
    )  # fmt: skip
    return out_w, out_ids, touched
