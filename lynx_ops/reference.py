# SPDX-License-Identifier: Apache-2.0
"""Plain-torch Lynx remap: the test oracle, the benchmark baseline and the CPU implementation.

It follows docs/ALGORITHM.md step by step, in float32, and favours being obviously correct over being
fast: the vote is a literal lexicographic sort with the leave-one-out histogram, where the Triton
kernel uses an equivalent packed key. Everything is dense (no `.item()`, no boolean-mask indexing,
no data-dependent shapes), so it also runs inside CUDA-graph capture: the CUDA implementation uses it
for padded batches too large for the kernel.

Shapes: `T` rows (padded batch), `E` experts, `k` experts per row, `B = beta + 1` histogram columns.
"""

from __future__ import annotations

import torch

from lynx_ops.routing import SIGMOID_BIAS_EPS, BatchScore, Scoring, WeightRule


def selection_scores(
    logits: torch.Tensor, correction_bias: torch.Tensor | None, scoring: int
) -> torch.Tensor:
    """[T, E] float32 selection scores in logit space (docs/ALGORITHM.md, Notation)."""
    x = logits.float()
    if scoring == Scoring.SIGMOID_BIAS:
        assert correction_bias is not None
        p = (torch.sigmoid(x) + correction_bias.float()).clamp(
            SIGMOID_BIAS_EPS, 1.0 - SIGMOID_BIAS_EPS
        )
        return torch.log(p) - torch.log1p(-p)
    return x


def vanilla_group_mask(topk_ids: torch.Tensor, num_experts: int, num_expert_group: int):
    """[T, E] bool: experts in a group the router already chose from, or None when ungrouped.

    Grouped top-k routers (DeepSeek V2/V3) limit each token to `topk_group` groups. The groups of the
    vanilla choice are allowed groups by construction, so restricting the remap to them can never
    break the limit, and needs no re-derivation of the router's group scores (which differ between
    families and tie-break differently). It is stricter than the limit when the vanilla choice
    spans fewer groups than allowed.
    """
    if num_expert_group <= 1:
        return None
    group_size = num_experts // num_expert_group
    expert_group = torch.arange(num_experts, device=topk_ids.device) // group_size  # [E]
    used_group = topk_ids.long() // group_size  # [T, k]
    return (expert_group[None, None, :] == used_group[:, :, None]).any(dim=1)


def _lexicographic_topk(keys: list[torch.Tensor], k: int) -> torch.Tensor:
    """[T, k] column indices of the k largest rows of `keys` compared lexicographically.

    `keys` are [T, E] tensors, most significant first. Remaining ties go to the lower index. Least
    significant key first with stable sorts is the textbook LSD construction of a lexicographic sort.
    """
    rows, cols = keys[0].shape
    perm = torch.arange(cols, device=keys[0].device).expand(rows, cols)
    for key in reversed(keys):
        order = torch.sort(key.gather(1, perm), dim=1, descending=True, stable=True).indices
        perm = perm.gather(1, order)
    return perm[:, :k]


def _distinct_experts(ids: torch.Tensor, valid: torch.Tensor, num_experts: int) -> torch.Tensor:
    """int32 scalar: number of distinct experts among the valid rows of `ids` [T, k]."""
    hit = torch.zeros(ids.shape[0], num_experts, dtype=torch.bool, device=ids.device)
    hit.scatter_(1, ids.long(), True)
    return (hit & valid[:, None]).any(dim=0).sum().to(torch.int32)


def _final_weights(
    x_sel: torch.Tensor,  # [T, k] raw router logits of the final experts
    x_all: torch.Tensor,  # [T, E] raw router logits
    vanilla_weights: torch.Tensor,  # [T, k]
    scoring: int,
    weight_rule: int,
    scale: float,
) -> torch.Tensor:
    if scoring == Scoring.SOFTMAX:
        if weight_rule == WeightRule.RAW:  # full-softmax probability
            return torch.exp(x_sel - torch.logsumexp(x_all, dim=1, keepdim=True)) * scale
        p = torch.softmax(x_sel, dim=1)
    else:  # sigmoid routers weight by the unbiased sigmoid, whatever the selection score
        p = torch.sigmoid(x_sel)
        if weight_rule == WeightRule.RAW:
            return p * scale
        p = p / p.sum(dim=1, keepdim=True)
    if weight_rule == WeightRule.PRESERVE_MASS:
        return p * vanilla_weights.float().sum(dim=1, keepdim=True)
    return p * scale


def _prepare(scores, topk_ids, num_valid, correction_bias, scoring, num_expert_group):
    """What every policy starts from: float32 logits x [T, E], the valid-row mask [T], the vanilla
    one-hot [T, E] int64, selection scores s [T, E] (-inf outside the row's allowed experts) and
    the allowed mask [T, E]. The ids' range and distinctness are checked here on CPU tensors."""
    num_rows, num_experts = scores.shape
    k = topk_ids.shape[1]
    device = scores.device
    x = scores.float()
    valid = torch.arange(num_rows, device=device) < num_valid.reshape(-1)[0]  # [T], no host sync

    vanilla = torch.zeros(num_rows, num_experts, dtype=torch.int64, device=device)
    # The router's contract: every row's ids are k distinct experts in [0, E). Checked on CPU
    # tensors, where it is free; on a GPU it would need a host sync, so there it is a documented
    # precondition (docs/ARCHITECTURE.md, "Preconditions").
    on_cpu = device.type == "cpu" and topk_ids.numel() > 0
    if on_cpu:
        low, high = (int(v) for v in torch.aminmax(topk_ids))
        if low < 0 or high >= num_experts:
            raise ValueError(f"lynx::remap: topk_ids must be in [0, E={num_experts}), got values "
                             f"in [{low}, {high}]")  # fmt: skip
    vanilla.scatter_(1, topk_ids.long(), 1)
    if on_cpu and bool((vanilla.sum(dim=1) != k).any()):  # a repeated id marks fewer than k
        raise ValueError("lynx::remap: topk_ids has a row naming the same expert twice")

    # Selection scores, with experts outside the row's allowed groups at -inf. A row with a
    # non-finite logit (a broken checkpoint, an overflow upstream) keeps its vanilla routing: its
    # score is 0 on its vanilla experts and nothing else is allowed, so it votes for exactly those
    # and its final choice is its vanilla set (docs/ALGORITHM.md leaves such rows undefined).
    finite = torch.isfinite(x).all(dim=1)  # [T]
    if scoring == Scoring.SIGMOID_BIAS and correction_bias is not None:
        # A NaN correction bias poisons its column's score in every row: all rows keep vanilla.
        finite = finite & ~torch.isnan(correction_bias.float()).any()
    s = selection_scores(x, correction_bias, scoring)
    s = torch.where(finite[:, None], s, 0.0)  # the mask below sets the non-vanilla experts to -inf
    allowed = finite[:, None] | (vanilla > 0)
    group_mask = vanilla_group_mask(topk_ids, num_experts, num_expert_group)
    if group_mask is not None:
        allowed = allowed & group_mask
    s = s.masked_fill(~allowed, float("-inf"))
    return x, valid, vanilla, s, allowed


def _bins(s, allowed, alpha: float, beta: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Steps 1-2: [T, E] gap d to the row's best expert (<= 0) and int64 bin q of every expert
    for every row; disallowed experts go below every bin."""
    d = s - s.max(dim=1, keepdim=True).values
    q = torch.ceil(alpha * d).clamp(min=-beta).to(torch.int64)
    return d, q.masked_fill(~allowed, -(beta + 1))


def _histogram(q, valid, beta: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Step 3: exact integer histogram over valid rows, hist [E, B] (column j counts rows with
    q = -j), and the per-row membership [T, E, B] it sums."""
    bins = torch.arange(beta + 1, device=q.device)
    member = (q[:, :, None] == -bins) & valid[:, None, None]  # [T, E, B]
    return member.sum(dim=0), member


def _finish(x, s, allowed, vanilla, valid, kept, topk_weights, topk_ids, scoring, weight_rule,
            scale):  # fmt: skip
    """Steps 6-8, shared by every policy: each valid row takes its k best experts by s inside the
    `kept` set [E] (or [T, E]), then its own next best outside it where the kept set holds fewer
    than k of its allowed experts (ties to vanilla experts, then to the lower index); weights for
    the rows whose set changed; the `touched` counters."""
    num_rows, num_experts = s.shape
    k = topk_ids.shape[1]
    in_kept = (kept & allowed).to(torch.int64)
    final_ids = _lexicographic_topk([in_kept, s, vanilla], k)  # [T, k], by s within each tier

    # Unchanged rows (and padding rows) keep the vanilla ids and weights, bit for bit.
    same_set = (final_ids[:, :, None] == topk_ids.long()[:, None, :]).any(dim=2).all(dim=1)
    changed = valid & ~same_set
    new_w = _final_weights(x.gather(1, final_ids), x, topk_weights, scoring, weight_rule, scale).to(
        topk_weights.dtype
    )
    out_w = torch.where(changed[:, None], new_w, topk_weights)
    out_ids = torch.where(changed[:, None], final_ids.to(topk_ids.dtype), topk_ids)

    # Rows keeping their top-1: the vanilla expert with the highest selection score is still used.
    used = torch.zeros(num_rows, num_experts, dtype=torch.bool, device=s.device)
    used.scatter_(1, out_ids.long(), True)
    keeps_top1 = (_top1_mask(s, vanilla) & used).any(dim=1) & valid

    touched = torch.stack(
        [
            _distinct_experts(topk_ids, valid, num_experts),
            _distinct_experts(out_ids, valid, num_experts),
            keeps_top1.sum().to(torch.int32),
            valid.sum().to(torch.int32),
            (used & (vanilla == 0) & valid[:, None]).sum().to(torch.int32),
        ]
    )
    return out_w, out_ids, touched


def _top1_mask(s, vanilla) -> torch.Tensor:
    """[T, E] bool: the row's vanilla experts of highest selection score (its top-1; all of them
    when they tie)."""
    s_vanilla = s.masked_fill(vanilla == 0, float("-inf"))
    return (vanilla > 0) & (s_vanilla == s_vanilla.max(dim=1, keepdim=True).values)


def remap_ref(
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
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Reference `lynx::remap` (the `bins` policy). Shapes, dtypes and scalars are assumed valid
    (the op validates them first); the ids' range and distinctness are checked here on CPU tensors.

    Returns new `(topk_weights [T, k], topk_ids [T, k], touched [5] int32)`; `touched` holds, over
    the valid rows: distinct experts before and after the remap, rows that keep their top-1 expert
    (the vanilla expert with the highest selection score), the number of valid rows, and the
    assignments moved (experts a row uses after the remap that were not among its own choices).
    """
    k = topk_ids.shape[1]
    x, valid, vanilla, s, allowed = _prepare(
        scores, topk_ids, num_valid, correction_bias, scoring, num_expert_group
    )
    # Steps 1-3: bins and their exact integer histogram.
    d, q = _bins(s, allowed, alpha, beta)
    hist, member = _histogram(q, valid, beta)
    leave_one_out = hist[None] - member.long()  # [T, E, B]: without the voting row itself

    # Step 4: each row's candidates by (q, c'[0], ..., c'[beta], d), lexicographically; equal
    # scores prefer the row's vanilla experts (the router may break score ties differently from
    # index order: bf16 logits tie often), so a lone row keeps exactly its vanilla set.
    keys = [q] + [leave_one_out[:, :, j] for j in range(beta + 1)] + [d, vanilla]
    candidates = _lexicographic_topk(keys, k)  # [T, k]

    # Step 5: kept set, from valid rows only.
    voted = torch.zeros_like(allowed)
    voted.scatter_(1, candidates, True)
    kept = (voted & valid[:, None]).any(dim=0)  # [E]
    return _finish(x, s, allowed, vanilla, valid, kept, topk_weights, topk_ids, scoring,
                   weight_rule, scale)  # fmt: skip


def budget_ref(
    scores: torch.Tensor,
    topk_weights: torch.Tensor,
    topk_ids: torch.Tensor,
    num_valid: torch.Tensor,
    correction_bias: torch.Tensor | None,
    budget: torch.Tensor,
    fraction: float,
    batch_score: int,
    alpha: float,
    beta: int,
    scoring: int,
    weight_rule: int,
    scale: float,
    num_expert_group: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Reference `lynx::remap_budget` (docs/ALGORITHM.md, "Other policies"): the step keeps at most
    K = min(budget, ceil(fraction * U)) of the U experts the valid rows chose, read on the device
    (`budget` is a one-element integer tensor, so a captured graph follows a new value), plus
    every valid row's top-1 even beyond K. Experts are ranked by an integer batch score:
    `batch_score` COUNT, the rows naming the expert among their top-k; or HIST, Lynx's bin
    histogram (c[0], ..., c[beta]) compared lexicographically; ties go to the lower index. Each
    row then takes its best k inside the kept set, and its own next best where the set holds fewer
    than k of its allowed experts. Same outputs as `remap_ref`."""
    num_rows, num_experts = scores.shape
    x, valid, vanilla, s, allowed = _prepare(
        scores, topk_ids, num_valid, correction_bias, scoring, num_expert_group
    )
    chosen = vanilla * valid[:, None]  # [T, E]
    in_union = chosen.sum(dim=0) > 0  # [E]
    # Every valid row's top-1 (its vanilla expert of highest s; the lowest index among ties).
    top1 = _lexicographic_topk([_top1_mask(s, vanilla).to(torch.int64)], 1)  # [T, 1]
    forced = torch.zeros_like(allowed).scatter_(1, top1, True)
    forced = (forced & valid[:, None]).any(dim=0)  # [E]
    if batch_score == BatchScore.COUNT:
        score_keys = [chosen.sum(dim=0)]
    else:
        hist, _ = _histogram(_bins(s, allowed, alpha, beta)[1], valid, beta)  # [E, B]
        score_keys = [hist[:, j] for j in range(beta + 1)]
    keys = [forced.to(torch.int64), in_union.to(torch.int64)] + score_keys
    order = _lexicographic_topk([key[None, :] for key in keys], num_experts)[0]  # [E]
    rank = torch.empty_like(order).scatter_(0, order, torch.arange(num_experts, device=s.device))
    union_size = in_union.sum()
    limit = torch.minimum(
        budget.reshape(-1)[0].to(torch.int64).clamp(min=1),
        torch.ceil(fraction * union_size.double()).to(torch.int64),
    )
    limit = torch.maximum(limit, forced.sum())  # the forced top-1s stay, even beyond K
    kept = (rank < limit) & in_union
    return _finish(x, s, allowed, vanilla, valid, kept, topk_weights, topk_ids, scoring,
                   weight_rule, scale)  # fmt: skip


def keep_ref(
    scores: torch.Tensor,
    topk_weights: torch.Tensor,
    topk_ids: torch.Tensor,
    num_valid: torch.Tensor,
    correction_bias: torch.Tensor | None,
    k0: torch.Tensor,
    scoring: int,
    weight_rule: int,
    scale: float,
    num_expert_group: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Reference `lynx::remap_keep` (docs/ALGORITHM.md, "Other policies"; OEA, arXiv 2511.02237):
    each valid row keeps its top-k0 experts by selection score; its other k - k0 slots take its
    best experts from the union of the valid rows' top-k0 sets, else its own next best. k0 = k
    returns the vanilla routing bit for bit, whether or not the router's ids are the rows' top-k
    by selection score (the identity rung of a k0 ladder; the kernels exit early there). k0 is a
    one-element tensor (an int is taken too), clamped to [1, k]; it is never read on the host, so
    the reference stays capture-safe on CUDA. Same outputs as `remap_ref`."""
    x, valid, vanilla, s, allowed = _prepare(
        scores, topk_ids, num_valid, correction_bias, scoring, num_expert_group
    )
    k = topk_ids.shape[1]
    k0 = torch.as_tensor(k0, device=scores.device).reshape(-1)[0].to(torch.int64).clamp(1, k)
    best = _lexicographic_topk([s, vanilla], k)  # [T, k]: the row's best first, ties to vanilla
    take = (torch.arange(k, device=scores.device) < k0).expand_as(best)  # its first k0
    pool = torch.zeros_like(allowed).scatter_(1, best, take)
    pool = (pool & valid[:, None]).any(dim=0)  # [E]
    out_w, out_ids, touched = _finish(x, s, allowed, vanilla, valid, pool, topk_weights, topk_ids,
                                      scoring, weight_rule, scale)  # fmt: skip
    # k0 = k: the vanilla routing, selected on the device (no host read of k0)
    n = valid.sum().to(torch.int32)
    distinct = _distinct_experts(topk_ids, valid, x.shape[1])
    same = torch.stack([distinct, distinct, n, n, torch.zeros_like(n)])
    identity = k0 >= k
    return (
        torch.where(identity, topk_weights, out_w),
        torch.where(identity, topk_ids, out_ids),
        torch.where(identity, same, touched),
    )
