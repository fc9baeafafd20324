# SPDX-License-Identifier: Apache-2.0
"""The `budget` and `keep_k0` policies (`torch.ops.lynx.remap_budget`, `remap_keep`) against
independent per-row Python implementations written from docs/ALGORITHM.md ("Other policies"),
plus the contract every policy of the family keeps: padding rows and unchanged rows returned bit
for bit, every valid row's top-1 kept, the expert bound, opcheck, and a budget and a k0 that change
between CUDA-graph replays without a new capture."""

from __future__ import annotations

import math

import pytest
import torch

import lynx_ops  # noqa: F401  (registers torch.ops.lynx)
from lynx_ops.reference import keep_ref, selection_scores, vanilla_group_mask
from lynx_ops.routing import BatchScore, Scoring, WeightRule
from tests.helpers import FAMILY_SHAPES, Shape, make_batch, unranked_ids

budget_op = torch.ops.lynx.remap_budget
keep_op = torch.ops.lynx.remap_keep


def _rows(x, ids, bias, shape: Shape):
    """Per row: selection scores (python floats) and the allowed experts."""
    s = selection_scores(x.float(), bias, int(shape.scoring))
    mask = vanilla_group_mask(ids, shape.E, shape.groups)
    out = []
    for t in range(x.shape[0]):
        allowed = [e for e in range(shape.E) if mask is None or bool(mask[t, e])]
        out.append(([float(v) for v in s[t]], allowed))
    return out


def _final(rows, ids, n, kept, k):
    """Each valid row's k best allowed experts: kept ones first, by score, ties to the row's
    vanilla experts, then to the lower index; a row whose set is unchanged keeps its ids."""
    out = []
    for t in range(ids.shape[0]):
        vanilla = [int(e) for e in ids[t]]
        if t >= n:
            out.append(vanilla)
            continue
        s, allowed = rows[t]
        order = sorted(allowed, key=lambda e: (e not in kept, -s[e], e not in vanilla, e))
        pick = order[:k]
        out.append(vanilla if set(pick) == set(vanilla) else pick)
    return out


def _top1(s, vanilla):
    return min(vanilla, key=lambda e: (-s[e], e))


def naive_budget(x, ids, bias, n, shape: Shape, budget, fraction, score):
    rows = _rows(x, ids, bias, shape)
    chosen = [[int(e) for e in ids[t]] for t in range(n)]
    union = {e for row in chosen for e in row}
    forced = {_top1(rows[t][0], chosen[t]) for t in range(n)}
    if score == BatchScore.COUNT:
        key = {e: (sum(e in row for row in chosen),) for e in union}
    else:
        hist = {e: [0] * (shape.beta + 1) for e in range(shape.E)}
        for t in range(n):
            s, allowed = rows[t]
            best = max(s[e] for e in allowed)
            for e in allowed:
                q = max(math.ceil(shape.alpha * (s[e] - best)), -shape.beta)
                hist[e][-q] += 1
        key = {e: tuple(hist[e]) for e in union}
    ranked = sorted(union - forced, key=lambda e: (tuple(-v for v in key[e]), e))
    limit = min(max(budget, 1), math.ceil(fraction * len(union)))
    kept = forced | set(ranked[: max(0, limit - len(forced))])
    return _final(rows, ids, n, kept, shape.k), kept


def naive_keep(x, ids, bias, n, shape: Shape, k0):
    rows = _rows(x, ids, bias, shape)
    pool = set()
    for t in range(n):
        s, allowed = rows[t]
        vanilla = {int(e) for e in ids[t]}
        pool |= set(sorted(allowed, key=lambda e: (-s[e], e not in vanilla, e))[:k0])
    return _final(rows, ids, n, pool, shape.k), pool


def _call_budget(shape, x, w, ids, bias, n, budget, fraction=1.0, score=BatchScore.COUNT):
    num_valid = torch.tensor([n], dtype=torch.int32, device=x.device)
    k_t = torch.tensor([budget], dtype=torch.int32, device=x.device)
    return budget_op(x, w, ids, num_valid, bias, k_t, fraction, int(score), shape.alpha,
                     shape.beta, int(shape.scoring), int(shape.rule), shape.scale, shape.groups)  # fmt: skip


def _call_keep(shape, x, w, ids, bias, n, k0):
    num_valid = torch.tensor([n], dtype=torch.int32, device=x.device)
    k0_t = torch.tensor([k0], dtype=torch.int32, device=x.device)
    return keep_op(x, w, ids, num_valid, bias, k0_t, int(shape.scoring), int(shape.rule),
                   shape.scale, shape.groups)  # fmt: skip


def _check_common(shape, x, w, ids, n, out_w, out_ids, touched, expected):
    got = out_ids.tolist()
    for t, row in enumerate(expected):
        assert got[t] == row, f"row {t}: {got[t]} != {row}"
        if row == ids[t].tolist():  # unchanged rows (padding included) come back bit for bit
            assert torch.equal(out_w[t], w[t])
    assert out_w.dtype == w.dtype and out_ids.dtype == ids.dtype
    assert bool(torch.isfinite(out_w).all()) and bool((out_w >= 0).all())
    before = len({int(e) for e in ids[:n].flatten()})
    after = len({int(e) for e in out_ids[:n].flatten()})
    assert touched.tolist()[:2] == [before, after]
    assert touched.tolist()[2] == n  # every valid row keeps its top-1
    assert touched.tolist()[3] == n


@pytest.mark.parametrize("shape", FAMILY_SHAPES)
@pytest.mark.parametrize("score", list(BatchScore))
def test_budget_matches_the_per_row_implementation(shape, score):
    for T, n, budget, fraction, seed in [(16, 16, 12, 1.0, 0), (32, 29, 1, 1.0, 1),
                                         (24, 24, 10**6, 0.6, 2), (8, 5, 3 * shape.k, 1.0, 3)]:  # fmt: skip
        x, w, ids, bias = make_batch(shape, T, seed=seed, spread=1.2)
        out = _call_budget(shape, x, w, ids, bias, n, budget, fraction, score)
        expected, kept = naive_budget(x, ids, bias, n, shape, budget, fraction, score)
        _check_common(shape, x, w, ids, n, *out, expected)
        if shape.groups <= 1 and len(kept) >= shape.k:  # every row fills k slots inside the set
            assert {int(e) for e in out[1][:n].flatten()} <= kept


@pytest.mark.parametrize("shape", FAMILY_SHAPES)
def test_keep_k0_matches_the_per_row_implementation(shape):
    for T, n, seed in [(16, 16, 0), (32, 27, 1), (5, 5, 2)]:
        x, w, ids, bias = make_batch(shape, T, seed=seed, spread=1.2)
        for k0 in sorted({1, max(1, shape.k // 2), shape.k}):
            out = _call_keep(shape, x, w, ids, bias, n, k0)
            expected, _ = naive_keep(x, ids, bias, n, shape, k0)
            _check_common(shape, x, w, ids, n, *out, expected)
            rows = _rows(x, ids, bias, shape)
            for t in range(n):  # each row keeps its own top-k0
                s, _ = rows[t]
                own = sorted(ids[t].tolist(), key=lambda e: (-s[e], e))[:k0]
                assert set(own) <= set(out[1][t].tolist())


def test_keep_all_k_and_a_budget_above_the_union_are_the_identity():
    shape = Shape(64, 6, rule=WeightRule.PRESERVE_MASS)
    x, w, ids, bias = make_batch(shape, 32, seed=5, spread=1.2)
    w = w.to(torch.bfloat16)
    for out_w, out_ids, touched in (
        _call_keep(shape, x, w, ids, bias, 32, shape.k),
        _call_budget(shape, x, w, ids, bias, 32, 64),
        _call_budget(shape, x, w, ids, bias, 32, 64, score=BatchScore.HIST),
    ):
        assert torch.equal(out_ids, ids) and torch.equal(out_w, w)
        assert touched[0] == touched[1] and touched[4] == 0


def _identity_touched(ids, n):
    distinct = len({int(e) for e in ids[:n].flatten()})
    return [distinct, distinct, n, n, 0]


@pytest.mark.parametrize("shape", FAMILY_SHAPES)
def test_keep_all_k_returns_the_router_routing_even_when_it_is_not_the_top_k(shape):
    """k0 = k is the identity rung of a k0 ladder (the controller's "off"), by definition, not
    only when the router's ids happen to be the rows' best by score: the reference and the CPU
    op return ids and weights bit for bit, padding rows included, and `touched` says nothing
    moved. k0 = k - 1 on the same batch does move rows, so the batch is not trivially fixed."""
    T, n = 12, 9
    x, _, _, bias = make_batch(shape, T, seed=3, spread=1.2)
    ids, w = unranked_ids(shape, T, seed=3)
    num_valid = torch.tensor([n], dtype=torch.int32)
    rest = (int(shape.scoring), int(shape.rule), shape.scale, shape.groups)
    for k0 in (shape.k, shape.k + 3):
        k0_t = torch.tensor([k0], dtype=torch.int32)
        for out_w, out_ids, touched in (
            keep_ref(x, w, ids, num_valid, bias, k0_t, *rest),
            _call_keep(shape, x, w, ids, bias, n, k0),
        ):
            assert torch.equal(out_ids, ids) and torch.equal(out_w, w)
            assert touched.tolist() == _identity_touched(ids, n)
    if shape.k > 1:
        moved = _call_keep(shape, x, w, ids, bias, n, shape.k - 1)
        assert not torch.equal(moved[1], ids)


def test_budget_cuts_the_union_to_k_or_the_forced_top1s():
    """E=128, k=8, 32 rows at the calibrated spread: with K=24 the step uses at most
    max(24, distinct top-1s) experts, and fewer K never uses more experts."""
    shape = Shape(128, 8, alpha=3.0, beta=2)
    x, w, ids, bias = make_batch(shape, 32, seed=7, spread=1.2)
    top1s = len({int(i) for i in ids[:, 0]})  # vLLM's topk returns the best first
    last = None
    for budget in (128, 64, 48, 32, 24, 16, 8):
        after = int(_call_budget(shape, x, w, ids, bias, 32, budget)[2][1])
        assert after <= max(budget, top1s)
        assert last is None or after <= last
        last = after
    assert last < int(_call_budget(shape, x, w, ids, bias, 32, 128)[2][0])


def test_k0_outside_1_to_k_acts_as_the_nearest_end():
    """The op reads k0 on the device and clamps it (reading it on the host would synchronise):
    0 and -3 act as 1, k + 2 as k (the router's choice), on the op and the reference alike."""
    shape = Shape(32, 4)
    x, w, ids, bias = make_batch(shape, 8, seed=9, spread=1.2)
    for k0, acts_as in ((0, 1), (-3, 1), (6, 4)):
        out = _call_keep(shape, x, w, ids, bias, 8, k0)
        want = _call_keep(shape, x, w, ids, bias, 8, acts_as)
        assert torch.equal(out[1], want[1]) and torch.equal(out[0], want[0])
        n = torch.tensor([8], dtype=torch.int32)
        ref = keep_ref(x, w, ids, n, bias, torch.tensor([k0]), int(shape.scoring),
                       int(shape.rule), shape.scale, shape.groups)  # fmt: skip
        assert torch.equal(ref[1], want[1])
    expected, _ = naive_keep(x, ids, bias, 8, shape, 1)
    assert _call_keep(shape, x, w, ids, bias, 8, 0)[1].tolist() == expected


def test_a_budget_below_one_acts_as_one_and_keeps_every_top1():
    shape = Shape(32, 4)
    x, w, ids, bias = make_batch(shape, 8, seed=9, spread=1.2)
    for budget in (0, -5):
        _, out_ids, touched = _call_budget(shape, x, w, ids, bias, 8, budget)
        expected, _ = naive_budget(x, ids, bias, 8, shape, 1, 1.0, BatchScore.COUNT)
        assert out_ids.tolist() == expected and int(touched[2]) == 8


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda a: budget_op(*a[:5], torch.tensor([1.5]), 1.0, 0, 3.0, 2, 0, 0, 1.0, 0),
         "budget must hold one int32/int64"),
        (lambda a: budget_op(*a[:5], torch.tensor([4, 5]), 1.0, 0, 3.0, 2, 0, 0, 1.0, 0),
         "budget must hold one int32/int64"),
        (lambda a: budget_op(*a[:5], torch.tensor([4]), 0.0, 0, 3.0, 2, 0, 0, 1.0, 0),
         r"fraction=0.0 must be in \(0, 1\]"),
        (lambda a: budget_op(*a[:5], torch.tensor([4]), 1.0, 7, 3.0, 2, 0, 0, 1.0, 0),
         "batch_score=7 unknown"),
        (lambda a: budget_op(*a[:5], torch.tensor([4]), 1.0, 0, 3.0, 9, 0, 0, 1.0, 0),
         "beta=9"),
        (lambda a: keep_op(*a[:5], torch.tensor([2.0]), 0, 0, 1.0, 0),
         r"k0 must hold one int32/int64 value \(the experts each row keeps; values outside "
         r"\[1, k=4\] act as the nearest end\), got shape \(1,\) dtype torch.float32"),
        (lambda a: keep_op(*a[:5], torch.tensor([2, 3]), 0, 0, 1.0, 0),
         r"k0 must hold one int32/int64 value .* got shape \(2,\)"),
        (lambda a: keep_op(a[0], a[1], a[2][:5], *a[3:5], torch.tensor([2]), 0, 0, 1.0, 0),
         "remap_keep: topk_ids"),
    ],
)  # fmt: skip
def test_bad_policy_arguments_name_the_problem(call, match):
    shape = Shape(32, 4)
    x, w, ids, bias = make_batch(shape, 8, seed=1)
    args = (x, w, ids, torch.tensor([8], dtype=torch.int32), bias)
    with pytest.raises(ValueError, match=match):
        call(args)


@pytest.mark.parametrize("which", ["budget", "keep"])
def test_opcheck(which):
    shape = Shape(64, 6, rule=WeightRule.PRESERVE_MASS, alpha=3.0, beta=2)
    x, w, ids, bias = make_batch(shape, 16, seed=3, spread=1.2)
    n = torch.tensor([13], dtype=torch.int32)
    if which == "budget":
        args = (x, w, ids, n, bias, torch.tensor([10], dtype=torch.int32), 0.8, 1, 3.0, 2,
                int(Scoring.SOFTMAX), int(shape.rule), 1.0, 0)  # fmt: skip
        op = budget_op.default
    else:
        args = (x, w, ids, n, bias, torch.tensor([3], dtype=torch.int32), int(Scoring.SOFTMAX),
                int(shape.rule), 1.0, 0)  # fmt: skip
        op = keep_op.default
    torch.library.opcheck(op, args)


@pytest.mark.cuda
@pytest.mark.parametrize("launch", ["fused", "split"])
def test_keep_follows_its_device_scalar_across_graph_replays(launch):
    """k0 from a device tensor: one captured graph replays every k0 the TPOT controller writes
    (8 rows: one program; 200 rows: the split launch)."""
    if not torch.cuda.is_available():
        pytest.skip("needs a GPU")
    shape = Shape(128, 8, alpha=3.0, beta=2)
    rows = 8 if launch == "fused" else 200
    x, w, ids, bias = make_batch(shape, rows, seed=13, spread=1.2, device="cuda")
    n = torch.tensor([rows - 2], dtype=torch.int32, device="cuda")
    k0_t = torch.tensor([8], dtype=torch.int32, device="cuda")
    args = (x, w, ids, n, bias, k0_t, 0, 0, 1.0, 0)
    keep_op(*args)  # warm-up outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out_w, out_ids, touched = keep_op(*args)
    for k0 in (8, 5, 2, 6):
        k0_t.fill_(k0)
        graph.replay()
        torch.cuda.synchronize()
        expected, _ = naive_keep(x.cpu(), ids.cpu(), None, rows - 2, shape, k0)
        assert out_ids.cpu().tolist() == expected


@pytest.mark.cuda
def test_budget_follows_its_device_scalar_across_graph_replays():
    if not torch.cuda.is_available():
        pytest.skip("needs a GPU")
    shape = Shape(128, 8, alpha=3.0, beta=2)
    x, w, ids, bias = make_batch(shape, 32, seed=11, spread=1.2, device="cuda")
    n = torch.tensor([30], dtype=torch.int32, device="cuda")
    k_t = torch.tensor([128], dtype=torch.int32, device="cuda")
    args = lambda: (x, w, ids, n, bias, k_t, 1.0, 0, 3.0, 2, 0, 0, 1.0, 0)  # noqa: E731
    budget_op(*args())  # warm-up outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out_w, out_ids, touched = budget_op(*args())
    for budget in (128, 40, 16, 64):
        k_t.fill_(budget)
        graph.replay()
        torch.cuda.synchronize()
        expected, _ = naive_budget(x.cpu(), ids.cpu(), None, 30, shape, budget, 1.0, 0)
        assert out_ids.cpu().tolist() == expected
        eager = budget_op(*args())
        assert torch.equal(out_ids, eager[1]) and torch.equal(out_w, eager[0])
