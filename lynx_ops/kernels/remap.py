# SPDX-License-Identifier: Apache-2.0
"""Triton kernels for `lynx::remap` and their launcher.

The remap needs two batch-wide reductions before any row's final choice is known: the bin
histogram (step 3), then the union of the rows' candidates (step 5). Two launch shapes:

* fused: one program holds the whole padded batch (small T): load once, histogram, votes, final
  choice, all in registers, one launch;
* split: three row-parallel launches over blocks of rows (large T), with the batch-wide reductions
  between them going through small per-block partials in scratch memory:
    1. `_hist_kernel`: each block's packed bin histogram;
    2. `_vote_kernel`: sums the partial histograms, each block's rows vote, the block's kept set;
    3. `_final_kernel`: ORs the kept sets, final choice, weights, outputs, experts touched.

Partials are summed as integers in a fixed order, with no float atomics, so the result is bitwise
deterministic on every GPU and tensor-parallel rank. The valid-row count is read on the device and
the grid depends on the padded size only, so a CUDA graph captured at T replays correctly for any
n <= T.

Keys, so that each of the k selections of a row costs one or two row reductions (intra-warp):
* vote, first key: (q + BETA) << 60 | packed histogram. Bin j (q = -j) of expert e counts in bits
  [12*(BETA-j), 12*(BETA-j)+12), so comparing packed values compares the count vectors
  (c0, ..., cBETA) lexicographically; counts stay below 4096 because T <= MAX_KERNEL_ROWS.
  The reference votes with the leave-one-out histogram; the full one gives the same order because
  experts are only compared within one bin, and removing the voting row subtracts 1 from the same
  column of every expert in that bin.
* vote, second key (ties of the first): the row's own gap as sortable bits, then whether the
  expert is in the row's vanilla choice, then the lower index.
* final choice: kept experts first (bit 60), then the score as sortable bits, then vanilla
  membership, then the lower index (kernels/policies.py shares this step).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from lynx_ops.kernels.configs import LaunchConfig, launch_config
from lynx_ops.routing import SIGMOID_BIAS_EPS, TOUCHED_LEN, Scoring, WeightRule

# Globals used in @triton.jit must be constexpr.
_NEG_INF = tl.constexpr(float("-inf"))
_POS_INF = tl.constexpr(float("inf"))
_INT64_MIN = tl.constexpr(-(2**63))
# Tie-break bits of a key: bit 10 = expert is in the row's vanilla choice, bits 0-9 = 1023 - expert
# index (E <= 1024). Equal scores go to the vanilla experts, then to the lower index.
_TIE_BITS = tl.constexpr(11)


@triton.jit
def _load_block(
    x_ptr, sx_t, sx_e, bias_ptr, id_ptr, si_t, si_k,
    rows, row_ok, cols, col_ok, group_size, alpha,
    K: tl.constexpr, BETA: tl.constexpr, SCORING: tl.constexpr, GROUPED: tl.constexpr,
    EPS: tl.constexpr,
):  # fmt: skip
    """One block of rows, [BT, BE]: raw logits x, selection scores s (-inf where not allowed),
    the allowed mask, the gap d to the row's best expert, its bin q (-(BETA+1) where not
    allowed) and the vanilla expert mask."""
    m2 = row_ok[:, None] & col_ok[None, :]
    x = tl.load(x_ptr + rows[:, None] * sx_t + cols[None, :] * sx_e, mask=m2, other=0.0)
    x = x.to(tl.float32)
    bias_nan = tl.zeros_like(col_ok)
    if SCORING == 2:  # SIGMOID_BIAS: logit(clamp(sigmoid(x) + b))
        b = tl.load(bias_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
        bias_nan = col_ok & (b != b)
        p = 1.0 / (1.0 + tl.exp(-x)) + b[None, :]
        p = tl.minimum(tl.maximum(p, EPS), 1.0 - EPS)
        s = tl.log(p) - tl.log(1.0 - p)
    else:
        s = x
    vanilla = tl.zeros_like(m2)
    in_group = tl.zeros_like(m2)
    for j in tl.static_range(K):
        vid = tl.load(id_ptr + rows * si_t + j * si_k, mask=row_ok, other=-1).to(tl.int32)
        vanilla = vanilla | (cols[None, :] == vid[:, None])
        if GROUPED:  # only groups the vanilla choice already uses (reference.vanilla_group_mask)
            in_group = in_group | ((cols[None, :] // group_size) == (vid // group_size)[:, None])
    # A row with a non-finite logit keeps its vanilla routing (reference.remap_ref): score 0, and
    # only its vanilla experts allowed (the mask below sets the rest to -inf).
    # A NaN correction bias makes every row's score NaN in that column (clamp would hide it here
    # and not in the reference): every row then keeps its vanilla routing, on both paths.
    bad = m2 & ((x != x) | (tl.abs(x) == _POS_INF) | bias_nan[None, :])
    row_bad = tl.max(bad.to(tl.int32), axis=1) > 0
    s = tl.where(row_bad[:, None], 0.0, s)
    allowed = m2 & ((row_bad[:, None] == 0) | vanilla)
    if GROUPED:
        allowed = allowed & in_group
    s = tl.where(allowed, s, _NEG_INF)
    m = tl.max(s, axis=1)
    m = tl.where(m == _NEG_INF, 0.0, m)  # rows with nothing allowed (masked rows): no inf - inf
    d = s - m[:, None]
    q = tl.maximum(tl.ceil(alpha * d), -BETA).to(tl.int32)
    q = tl.where(allowed, q, -(BETA + 1))
    return x, s, allowed, d, q, vanilla


@triton.jit
def _block_hist(q, valid, BETA: tl.constexpr):
    """[BE] int64: packed bin histogram of this block's valid rows."""
    field = (12 * tl.maximum(BETA + q, 0)).to(tl.int64)
    one = tl.full(q.shape, 1, dtype=tl.int64)
    return tl.sum(tl.where(valid[:, None] & (q >= -BETA), one << field, 0), axis=0)


@triton.jit
def _tie_bits(vanilla, cols):
    """[BT, BE] int64: the low key bits that order equal scores (see _TIE_BITS)."""
    return (vanilla.to(tl.int64) << 10) | (1023 - cols).to(tl.int64)[None, :]


@triton.jit
def _sortable(s):
    """int64 with the order of the float32 scores s (-0.0 and 0.0 equal, as floats are)."""
    s = tl.where(s == 0.0, 0.0, s)
    bits = s.to(tl.int32, bitcast=True)
    return (bits ^ ((bits >> 31) & 0x7FFFFFFF)).to(tl.int64)


@triton.jit
def _score_key(s, vanilla, cols):
    """[BT, BE] int64: the score, then vanilla membership, then the lower index (final choice)."""
    return (_sortable(s) << _TIE_BITS) | _tie_bits(vanilla, cols)


@triton.jit
def _hist_rank(hist, col_ok):
    """[BE] int64: how many experts have a smaller packed histogram (equal ones share a rank), so
    the rank orders experts as the histogram does, in 10 bits instead of 12 * (BETA + 1)."""
    smaller = (hist[:, None] < hist[None, :]) & col_ok[:, None]
    return tl.sum(smaller.to(tl.int64), axis=0)


@triton.jit
def _block_kept(d, q, allowed, vanilla, hist, valid, cols, col_ok,
                K: tl.constexpr, BETA: tl.constexpr, VARIANT: tl.constexpr,
                BLOCK_K: tl.constexpr):  # fmt: skip
    """[BE] int32: 1 for experts among the k candidates of some valid row of this block.
    VARIANT 0: two keys, two row reductions per pick; 1: one key with the histogram's rank in
    place of the histogram, one reduction per pick."""
    gap = 0x7FFFFFFF - tl.abs(d).to(tl.int32, bitcast=True)  # smaller |d| -> larger
    if VARIANT == 0:
        key1 = tl.where(allowed, ((BETA + q).to(tl.int64) << 60) | hist[None, :], -1)
        key2 = (gap.to(tl.int64) << _TIE_BITS) | _tie_bits(vanilla, cols)
        voted = tl.zeros(key1.shape, dtype=tl.int1)
        for _ in tl.static_range(K):
            best1 = tl.max(key1, axis=1)
            tie = key1 == best1[:, None]
            best2 = tl.max(tl.where(tie, key2, -1), axis=1)
            chosen = tie & (key2 == best2[:, None])
            voted = voted | chosen
            key1 = tl.where(chosen, -2, key1)
    else:
        rank = _hist_rank(hist, col_ok)
        key = (((BETA + q).to(tl.int64) << 53) | (rank[None, :] << 42)
               | (gap.to(tl.int64) << _TIE_BITS) | _tie_bits(vanilla, cols))  # fmt: skip
        key = tl.where(allowed, key, -1)
        voted = tl.zeros(key.shape, dtype=tl.int1)
        for _ in tl.static_range(K):
            chosen = key == tl.max(key, axis=1)[:, None]
            voted = voted | chosen
            key = tl.where(chosen, -2, key)
    return tl.max((voted & valid[:, None]).to(tl.int32), axis=0)


@triton.jit
def _block_final(
    x, s, allowed, vanilla, kept, rows, row_ok, valid, cols, col_ok,
    x_ptr, sx_t, sx_e, w_ptr, sw_t, sw_k, id_ptr, si_t, si_k, out_w_ptr, out_id_ptr,
    E, scale,
    K: tl.constexpr, SCORING: tl.constexpr, RULE: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    """Final choice, inside the kept set first, weights and outputs for every row of the block
    (padding rows get their vanilla values). Returns [BE] int32 masks of the experts the block's
    valid rows use before and after."""
    kcols = tl.arange(0, BLOCK_K)
    k_ok = kcols < K
    key = _score_key(s, vanilla, cols)
    # Kept experts first (bit 60 above the 43-bit signed score key), then the row's own next best
    # where the kept set holds fewer than k of its allowed experts (budget and keep_k0 policies;
    # the bins policy's kept set always holds k for every row), never a disallowed one.
    key = key + (kept[None, :] > 0).to(tl.int64) * (1 << 60)
    key = tl.where(allowed, key, _INT64_MIN)
    # -1 in the padded columns (k not a power of two) so they never match a vanilla id
    new_ids = tl.full([s.shape[0], BLOCK_K], -1, dtype=tl.int32)
    final = tl.zeros(key.shape, dtype=tl.int1)
    for i in tl.static_range(K):
        best = tl.max(key, axis=1)
        chosen = key == best[:, None]
        final = final | chosen
        pick = 1023 - (best & 1023).to(tl.int32)
        new_ids = tl.where(kcols[None, :] == i, pick[:, None], new_ids)
        key = tl.where(chosen, _INT64_MIN, key)

    mk = row_ok[:, None] & k_ok[None, :]
    v_ids = tl.load(id_ptr + rows[:, None] * si_t + kcols[None, :] * si_k, mask=mk, other=0)
    v_w = tl.load(w_ptr + rows[:, None] * sw_t + kcols[None, :] * sw_k, mask=mk, other=0.0)
    # Same expert set as vanilla? Then the row keeps the vanilla ids and weights bit for bit.
    changed = valid & (tl.max((final != vanilla).to(tl.int32), axis=1) > 0)

    # Weights of the final experts with the family's rule (docs/ALGORITHM.md step 7). Logits of the
    # chosen experts are gathered from memory (the block is in L1/L2 already).
    id_ok = mk & (new_ids >= 0) & (new_ids < E)
    x_sel = tl.load(x_ptr + rows[:, None] * sx_t + new_ids * sx_e, mask=id_ok, other=0.0)
    x_sel = tl.where(k_ok[None, :], x_sel.to(tl.float32), _NEG_INF)
    if SCORING == 0:
        if RULE == 2:  # full-softmax probability
            m_all = tl.max(tl.where(col_ok[None, :], x, _NEG_INF), axis=1)
            z_all = tl.sum(tl.where(col_ok[None, :], tl.exp(x - m_all[:, None]), 0.0), axis=1)
            p = tl.exp(x_sel - m_all[:, None]) / z_all[:, None]
        else:
            e = tl.exp(x_sel - tl.max(x_sel, axis=1)[:, None])
            p = e / tl.sum(e, axis=1)[:, None]
    else:
        p = tl.where(k_ok[None, :], 1.0 / (1.0 + tl.exp(-x_sel)), 0.0)
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

    used = tl.where(changed[:, None], final, vanilla) & valid[:, None]
    before = tl.max((vanilla & valid[:, None]).to(tl.int32), axis=0)
    after = tl.max(used.to(tl.int32), axis=0)
    # rows keeping their top-1: the vanilla expert with the highest selection score is still used
    s_vanilla = tl.where(vanilla, s, _NEG_INF)
    top1 = vanilla & (s_vanilla == tl.max(s_vanilla, axis=1)[:, None])
    keeps = tl.max((top1 & used).to(tl.int32), axis=1)
    # assignments moved: experts a valid row now uses that were not among its vanilla choices
    moved = tl.sum(tl.sum((used & ~vanilla).to(tl.int32), axis=1), axis=0)
    return before, after, tl.sum(keeps, axis=0), moved


@triton.jit
def _num_valid(n_ptr, T):
    # Clamp in the stored dtype first: an int64 count past 2**31 must not wrap (reference: all rows).
    n = tl.load(n_ptr)
    return tl.minimum(tl.maximum(n, 0), T).to(tl.int32)


@triton.jit
def _store_touched(touched_ptr, before, after, top1, n, moved):
    """The op's third output from one program's [BE] before/after masks and its counts."""
    tl.store(touched_ptr, tl.sum(before, axis=0))
    tl.store(touched_ptr + 1, tl.sum(after, axis=0))
    tl.store(touched_ptr + 2, top1)
    tl.store(touched_ptr + 3, n)
    tl.store(touched_ptr + 4, moved)


@triton.jit
def _whole_batch(n_ptr, T, E, BLOCK_T: tl.constexpr, BLOCK_E: tl.constexpr):
    """Index vectors of a one-program launch over the whole padded batch: (valid-row count, rows,
    row_ok, valid, cols, col_ok)."""
    n = _num_valid(n_ptr, T)
    rows = tl.arange(0, BLOCK_T)
    cols = tl.arange(0, BLOCK_E)
    return n, rows, rows < T, rows < n, cols, cols < E


@triton.jit
def _sum_partials(ptr, P, cols, BLOCK_E: tl.constexpr, CHUNK: tl.constexpr, VOLATILE: tl.constexpr):
    """[BE] int64: sum over the P per-block rows of a [P, BE] partial buffer, in a fixed order."""
    acc = tl.zeros([BLOCK_E], dtype=tl.int64)
    for p0 in range(0, P, CHUNK):
        pr = p0 + tl.arange(0, CHUNK)
        tile = tl.load(
            ptr + pr[:, None] * BLOCK_E + cols[None, :],
            mask=(pr < P)[:, None], other=0, volatile=VOLATILE,
        )  # fmt: skip
        acc += tl.sum(tile.to(tl.int64), axis=0)
    return acc


@triton.jit
def _fused_kernel(
    x_ptr, sx_t, sx_e, w_ptr, sw_t, sw_k, id_ptr, si_t, si_k, n_ptr, bias_ptr,
    out_w_ptr, out_id_ptr, touched_ptr,
    T, E, alpha, scale, group_size,
    K: tl.constexpr, BETA: tl.constexpr, SCORING: tl.constexpr, RULE: tl.constexpr,
    GROUPED: tl.constexpr, EPS: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_K: tl.constexpr, VARIANT: tl.constexpr,
):  # fmt: skip
    """Whole batch (T <= BLOCK_T) in one program."""
    n, rows, row_ok, valid, cols, col_ok = _whole_batch(n_ptr, T, E, BLOCK_T, BLOCK_E)
    x, s, allowed, d, q, vanilla = _load_block(
        x_ptr, sx_t, sx_e, bias_ptr, id_ptr, si_t, si_k,
        rows, row_ok, cols, col_ok, group_size, alpha, K, BETA, SCORING, GROUPED, EPS,
    )  # fmt: skip
    hist = _block_hist(q, valid, BETA)
    kept = _block_kept(d, q, allowed, vanilla, hist, valid, cols, col_ok, K, BETA, VARIANT,
                       BLOCK_K)  # fmt: skip
    before, after, top1, moved = _block_final(
        x, s, allowed, vanilla, kept, rows, row_ok, valid, cols, col_ok,
        x_ptr, sx_t, sx_e, w_ptr, sw_t, sw_k, id_ptr, si_t, si_k, out_w_ptr, out_id_ptr,
        E, scale, K, SCORING, RULE, BLOCK_K,
    )  # fmt: skip
    _store_touched(touched_ptr, before, after, top1, n, moved)


@triton.jit
def _split_rows(
    x_ptr, sx_t, sx_e, bias_ptr, id_ptr, si_t, si_k, n_ptr, T, E, group_size, alpha,
    K: tl.constexpr, BETA: tl.constexpr, SCORING: tl.constexpr, GROUPED: tl.constexpr,
    EPS: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_E: tl.constexpr,
):  # fmt: skip
    """This program's block of valid rows in a split launch, loaded (padding rows masked out):
    (pid, rows, valid, cols) and `_load_block`'s (x, s, allowed, d, q, vanilla)."""
    pid = tl.program_id(0)
    n = _num_valid(n_ptr, T)
    rows = pid * BLOCK_T + tl.arange(0, BLOCK_T)
    cols = tl.arange(0, BLOCK_E)
    valid = rows < n
    x, s, allowed, d, q, vanilla = _load_block(
        x_ptr, sx_t, sx_e, bias_ptr, id_ptr, si_t, si_k,
        rows, valid, cols, cols < E, group_size, alpha, K, BETA, SCORING, GROUPED, EPS,
    )  # fmt: skip
    return pid, rows, valid, cols, x, s, allowed, d, q, vanilla


@triton.jit
def _hist_kernel(
    x_ptr, sx_t, sx_e, id_ptr, si_t, si_k, n_ptr, bias_ptr, hist_ptr, counter_ptr,
    T, E, alpha, group_size,
    K: tl.constexpr, BETA: tl.constexpr, SCORING: tl.constexpr, GROUPED: tl.constexpr,
    EPS: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_E: tl.constexpr,
):  # fmt: skip
    """Launch 1 of 3: this block's packed histogram into hist[pid]."""
    pid, rows, valid, cols, x, s, allowed, d, q, vanilla = _split_rows(
        x_ptr, sx_t, sx_e, bias_ptr, id_ptr, si_t, si_k, n_ptr, T, E, group_size, alpha,
        K, BETA, SCORING, GROUPED, EPS, BLOCK_T, BLOCK_E,
    )  # fmt: skip
    tl.store(hist_ptr + pid * BLOCK_E + cols, _block_hist(q, valid, BETA))
    if pid == 0:  # launch 3 counts finished blocks here; launches on one stream run in order
        tl.store(counter_ptr, 0)


@triton.jit
def _vote_kernel(
    x_ptr, sx_t, sx_e, id_ptr, si_t, si_k, n_ptr, bias_ptr, hist_ptr, kept_ptr,
    T, E, P, alpha, group_size,
    K: tl.constexpr, BETA: tl.constexpr, SCORING: tl.constexpr, GROUPED: tl.constexpr,
    EPS: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_E: tl.constexpr, CHUNK: tl.constexpr,
    BLOCK_K: tl.constexpr, VARIANT: tl.constexpr,
):  # fmt: skip
    """Launch 2 of 3: batch histogram, this block's votes, its kept set into kept[pid]."""
    # The partials' loop runs before the block is loaded: with it after the load (0e6716e to
    # 06c822b) Triton 3.6 emitted up to 3.8x the PTX for this kernel on sm_90 (Qwen3 T=256: 8123
    # against 2130 instructions; perf/kernel_ptx.py), which fits the 17-32% slower split launches
    # the H200 timed since (docs/PERFORMANCE.md).
    hist = _sum_partials(hist_ptr, P, tl.arange(0, BLOCK_E), BLOCK_E, CHUNK, False)
    pid, rows, valid, cols, x, s, allowed, d, q, vanilla = _split_rows(
        x_ptr, sx_t, sx_e, bias_ptr, id_ptr, si_t, si_k, n_ptr, T, E, group_size, alpha,
        K, BETA, SCORING, GROUPED, EPS, BLOCK_T, BLOCK_E,
    )  # fmt: skip
    kept = _block_kept(d, q, allowed, vanilla, hist, valid, cols, cols < E, K, BETA, VARIANT,
                       BLOCK_K)  # fmt: skip
    tl.store(kept_ptr + pid * BLOCK_E + cols, kept.to(tl.int8))


@triton.jit
def _final_kernel(
    x_ptr, sx_t, sx_e, w_ptr, sw_t, sw_k, id_ptr, si_t, si_k, n_ptr, bias_ptr,
    kept_ptr, before_ptr, after_ptr, top1_ptr, moved_ptr, counter_ptr,
    out_w_ptr, out_id_ptr, touched_ptr,
    T, E, P, alpha, scale, group_size,
    K: tl.constexpr, BETA: tl.constexpr, SCORING: tl.constexpr, RULE: tl.constexpr,
    GROUPED: tl.constexpr, EPS: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_K: tl.constexpr, CHUNK: tl.constexpr,
):  # fmt: skip
    """Launch 3 of 3: the kept set from the blocks' partials (OR), then `_final_rows` (the keep_k0
    policy's split path runs the same two steps, kernels/policies.py)."""
    cols = tl.arange(0, BLOCK_E)
    kept = _sum_partials(kept_ptr, P, cols, BLOCK_E, CHUNK, False)
    _final_rows(
        kept, x_ptr, sx_t, sx_e, w_ptr, sw_t, sw_k, id_ptr, si_t, si_k, n_ptr, bias_ptr,
        before_ptr, after_ptr, top1_ptr, moved_ptr, counter_ptr, out_w_ptr, out_id_ptr,
        touched_ptr, T, E, P, alpha, scale, group_size,
        K, BETA, SCORING, RULE, GROUPED, EPS, BLOCK_T, BLOCK_E, BLOCK_K, CHUNK,
    )  # fmt: skip


@triton.jit
def _final_rows(
    kept, x_ptr, sx_t, sx_e, w_ptr, sw_t, sw_k, id_ptr, si_t, si_k, n_ptr, bias_ptr,
    before_ptr, after_ptr, top1_ptr, moved_ptr, counter_ptr, out_w_ptr, out_id_ptr, touched_ptr,
    T, E, P, alpha, scale, group_size,
    K: tl.constexpr, BETA: tl.constexpr, SCORING: tl.constexpr, RULE: tl.constexpr,
    GROUPED: tl.constexpr, EPS: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_K: tl.constexpr, CHUNK: tl.constexpr,
):  # fmt: skip
    """Final choice and outputs for this program's block of rows (padding rows too) given the
    batch's kept set [BE]; the last block to finish counts the experts touched over all blocks."""
    pid = tl.program_id(0)
    n = _num_valid(n_ptr, T)
    rows = pid * BLOCK_T + tl.arange(0, BLOCK_T)
    row_ok = rows < T
    valid = rows < n
    cols = tl.arange(0, BLOCK_E)
    col_ok = cols < E
    x, s, allowed, d, q, vanilla = _load_block(
        x_ptr, sx_t, sx_e, bias_ptr, id_ptr, si_t, si_k,
        rows, row_ok, cols, col_ok, group_size, alpha, K, BETA, SCORING, GROUPED, EPS,
    )  # fmt: skip
    before, after, top1, moved = _block_final(
        x, s, allowed, vanilla, kept, rows, row_ok, valid, cols, col_ok,
        x_ptr, sx_t, sx_e, w_ptr, sw_t, sw_k, id_ptr, si_t, si_k, out_w_ptr, out_id_ptr,
        E, scale, K, SCORING, RULE, BLOCK_K,
    )  # fmt: skip
    _reduce_touched(before, after, top1, moved, pid, n, cols, before_ptr, after_ptr, top1_ptr,
                    moved_ptr, counter_ptr, touched_ptr, P, BLOCK_E, CHUNK)  # fmt: skip


@triton.jit
def _reduce_touched(before, after, top1, moved, pid, n, cols, before_ptr, after_ptr, top1_ptr,
                    moved_ptr, counter_ptr, touched_ptr, P,
                    BLOCK_E: tl.constexpr, CHUNK: tl.constexpr):  # fmt: skip
    """A split launch's `touched`: this block's partials out, and the last block to finish sums
    every block's into the op's third output."""
    tl.store(before_ptr + pid * BLOCK_E + cols, before.to(tl.int8))
    tl.store(after_ptr + pid * BLOCK_E + cols, after.to(tl.int8))
    tl.store(top1_ptr + pid, top1)
    tl.store(moved_ptr + pid, moved)
    # Classic last-block reduction: every thread's stores are issued before the release below,
    # and the block that sees P - 1 finished blocks reads them all back (volatile: past L1).
    tl.debug_barrier()
    finished = tl.atomic_add(counter_ptr, 1, sem="acq_rel")
    if finished == P - 1:
        all_before = _sum_partials(before_ptr, P, cols, BLOCK_E, CHUNK, True)
        all_after = _sum_partials(after_ptr, P, cols, BLOCK_E, CHUNK, True)
        tl.store(touched_ptr, tl.sum((all_before > 0).to(tl.int32), axis=0))
        tl.store(touched_ptr + 1, tl.sum((all_after > 0).to(tl.int32), axis=0))
        top1_total = tl.full([], 0, tl.int32)
        moved_total = tl.full([], 0, tl.int32)
        for p0 in range(0, P, BLOCK_E):
            pr = p0 + cols
            top1_total += tl.sum(
                tl.load(top1_ptr + pr, mask=pr < P, other=0, volatile=True), axis=0
            )
            moved_total += tl.sum(
                tl.load(moved_ptr + pr, mask=pr < P, other=0, volatile=True), axis=0
            )
        tl.store(touched_ptr + 2, top1_total)
        tl.store(touched_ptr + 3, n)
        tl.store(touched_ptr + 4, moved_total)


def split_buffers(num_rows: int, num_experts: int, block_t: int, device):
    """Scratch for a split launch: (blocks, chunk, [3, blocks, BE] int8 masks (kept partials,
    before, after), finished-block counter, per-block top-1 and moved counts)."""
    blocks = triton.cdiv(num_rows, block_t)
    block_e = triton.next_power_of_2(num_experts)
    chunk = max(1, min(triton.next_power_of_2(blocks), 4096 // block_e))
    masks = torch.empty((3, blocks, block_e), dtype=torch.int8, device=device)
    counts = torch.empty((2 * blocks + 1,), dtype=torch.int32, device=device)
    return blocks, chunk, masks, counts[:1], counts[1 : blocks + 1], counts[blocks + 1 :]


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
    config: LaunchConfig | None = None,
):
    """Launch the kernels. Inputs are validated by the op; no host synchronisation happens here.
    `config` overrides the launch shape (tests and benchmarks exercise both paths with it)."""
    num_rows, num_experts = scores.shape
    k = topk_ids.shape[1]
    out_w = topk_weights.new_empty(topk_weights.shape)
    out_ids = topk_ids.new_empty(topk_ids.shape)
    touched = topk_ids.new_empty((TOUCHED_LEN,), dtype=torch.int32)
    if num_rows == 0:
        touched.zero_()
        return out_w, out_ids, touched
    grouped = num_expert_group > 1
    group_size = num_experts // num_expert_group if grouped else 1
    bias = correction_bias if correction_bias is not None else scores
    cfg = config or launch_config(num_rows, num_experts, k)
    block_e = triton.next_power_of_2(num_experts)
    meta = dict(
        K=k, BETA=int(beta), SCORING=int(Scoring(scoring)), GROUPED=grouped, EPS=SIGMOID_BIAS_EPS,
        BLOCK_E=block_e, num_warps=cfg.num_warps,
    )  # fmt: skip
    block_k = triton.next_power_of_2(k)
    x_args = (scores, scores.stride(0), scores.stride(1))
    w_args = (topk_weights, topk_weights.stride(0), topk_weights.stride(1))
    id_args = (topk_ids, topk_ids.stride(0), topk_ids.stride(1))
    rule = int(WeightRule(weight_rule))
    alpha, scale = float(alpha), float(scale)

    if cfg.fused:
        assert cfg.block_t >= num_rows, "fused launch needs the whole batch in one block"
        _fused_kernel[(1,)](
            *x_args, *w_args, *id_args, num_valid, bias, out_w, out_ids, touched,
            num_rows, num_experts, alpha, scale, group_size,
            RULE=rule, BLOCK_T=cfg.block_t, BLOCK_K=block_k, VARIANT=cfg.variant, **meta,
        )  # fmt: skip
        return out_w, out_ids, touched

    blocks, chunk, masks, counter, top1, moved = split_buffers(
        num_rows, num_experts, cfg.block_t, scores.device
    )  # fmt: skip
    hist = torch.empty((blocks, block_e), dtype=torch.int64, device=scores.device)
    _hist_kernel[(blocks,)](
        *x_args, *id_args, num_valid, bias, hist, counter,
        num_rows, num_experts, alpha, group_size, BLOCK_T=cfg.block_t, **meta,
    )  # fmt: skip
    _vote_kernel[(blocks,)](
        *x_args, *id_args, num_valid, bias, hist, masks[0],
        num_rows, num_experts, blocks, alpha, group_size,
        BLOCK_T=cfg.block_t, CHUNK=chunk, BLOCK_K=block_k, VARIANT=cfg.variant, **meta,
    )  # fmt: skip
    _final_kernel[(blocks,)](
        *x_args, *w_args, *id_args, num_valid, bias, masks[0], masks[1], masks[2], top1, moved,
        counter,
        out_w, out_ids, touched,
        num_rows, num_experts, blocks, alpha, scale, group_size,
        RULE=rule, BLOCK_T=cfg.block_t, BLOCK_K=block_k, CHUNK=chunk, **meta,
    )  # fmt: skip
    return out_w, out_ids, touched
