# SPDX-License-Identifier: Apache-2.0
"""The reference remap on hand-worked cases and on the output contract (docs/ALGORITHM.md).

These run `torch.ops.lynx.remap` on CPU, whose implementation is `lynx_ops.reference.remap_ref`.
Expected values are worked out by hand in the comments, not produced by the code under test.
"""

from __future__ import annotations

import pytest
import torch

import lynx_ops  # noqa: F401  (registers torch.ops.lynx)
from lynx_ops.reference import remap_ref
from lynx_ops.routing import Scoring, WeightRule
from tests.helpers import FAMILY_SHAPES, Shape, make_batch, op_args, vanilla_routing

remap = torch.ops.lynx.remap


def _call(x, w, ids, n, *, alpha=1.0, beta=1, scoring=Scoring.SOFTMAX,
          rule=WeightRule.RENORMALIZE, scale=1.0, groups=0, bias=None):  # fmt: skip
    num_valid = torch.tensor([n], dtype=torch.int32)
    return remap(x, w, ids, num_valid, bias, alpha, beta, int(scoring), int(rule), scale, groups)


def _crafted_batch():
    """4 rows, E=8, k=2. Row t: favourite t (logit 10), private runner-up t+4 (logit 1), and a
    weak liking for (t+1)%4 (logit 0.5); everything else 0.

    With alpha=1, beta=1: each row's bin 0 is its favourite alone; all else is the floor bin.
    Vanilla: row t -> {t, t+4}: 8 distinct experts. Vote: the favourite, then among floor experts
    the popular ones (experts 0..3 are someone's bin-0 choice, c[0]=1; 4..7 have c[0]=0); among
    those, equal histograms, so the row's own gap decides: (t+1)%4 at 0.5 beats the others at 0.
    Kept set {0,1,2,3}; row t's final pair by score: {t, (t+1)%4}. 8 -> 4 experts.
    """
    x = torch.zeros(4, 8)
    for t in range(4):
        x[t, t] = 10.0
        x[t, t + 4] = 1.0
        x[t, (t + 1) % 4] = 0.5
    w, ids = vanilla_routing(x, Shape(8, 2))
    return x, w, ids.to(torch.int32)


def test_crafted_batch_shrinks_by_known_amount():
    x, w, ids = _crafted_batch()
    out_w, out_ids, touched = _call(x, w, ids, 4)
    expected = torch.tensor([[0, 1], [1, 2], [2, 3], [3, 0]], dtype=torch.int32)
    assert torch.equal(out_ids, expected)
    # 8 -> 4 experts; every row keeps its top-1 (logit 10); 4 valid rows; each row's runner-up
    # t+4 moved to (t+1)%4: 4 assignments moved
    assert touched.tolist() == [8, 4, 4, 4, 4]
    # renormalised softmax over the two final logits: 10 and 0.5
    p = torch.softmax(torch.tensor([10.0, 0.5]), 0)
    torch.testing.assert_close(out_w, p.expand(4, 2))


@pytest.mark.parametrize("scoring", list(Scoring), ids=lambda s: s.name)
def test_single_valid_row_is_identity(scoring):
    shape = Shape(32, 4, scoring)
    x, w, ids, bias = make_batch(shape, 5, seed=1, spread=0.3)  # low confidence everywhere
    # a permuted vanilla order must come back as it was
    w, ids = w.flip(1).contiguous(), ids.flip(1).contiguous()
    out_w, out_ids, touched = _call(x, w, ids, 1, alpha=3.0, beta=2, scoring=scoring, bias=bias)
    assert torch.equal(out_ids, ids) and torch.equal(out_w, w)
    assert touched.tolist() == [4, 4, 1, 1, 0]


def test_high_confidence_token_keeps_top1():
    # Row 0 has a clear favourite (expert 7, far above the rest); rows 1..7 all like experts 0..3.
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(8, 16, generator=gen) * 0.2
    x[1:, :4] += 3.0
    x[0, 7] = 8.0
    w, ids = vanilla_routing(x, Shape(16, 4))
    out_w, out_ids, _ = _call(x, w, ids.to(torch.int32), 8, alpha=1.0, beta=2)
    assert int(out_ids[0, 0]) == 7
    # the popular experts absorb the rest of row 0's low-confidence choices
    assert set(out_ids[0, 1:].tolist()) <= {0, 1, 2, 3}


def test_bin0_experts_are_kept_when_at_most_k():
    # Row 0: experts 5 and 9 both within 1/alpha of the top (bin 0), k = 3: both must survive.
    x = torch.zeros(6, 12)
    x[1:, 0:3] = 4.0
    x[0, 5], x[0, 9], x[0, 11] = 6.0, 5.8, 2.0
    w, ids = vanilla_routing(x, Shape(12, 3))
    _, out_ids, _ = _call(x, w, ids.to(torch.int32), 6, alpha=1.0, beta=2)
    assert {5, 9} <= set(out_ids[0].tolist()) and int(out_ids[0, 0]) == 5


def test_padding_rows_neither_vote_nor_change():
    shape = Shape(32, 4)
    x, w, ids, _ = make_batch(shape, 10, seed=3)
    n = 6
    # garbage in the padding rows: non-finite logits, arbitrary (in-range) ids and weights
    x[n:] = torch.tensor(float("nan"))
    x[n, 0] = float("inf")
    ids[n:] = torch.arange(4, dtype=torch.int32)
    w[n:] = -7.0
    out_w, out_ids, touched = _call(x, w, ids, n, alpha=2.0, beta=2)
    assert torch.equal(out_ids[n:], ids[n:]) and torch.equal(out_w[n:], w[n:])
    # valid rows come out exactly as if the batch were only the valid rows
    ref_w, ref_ids, ref_touched = _call(x[:n], w[:n], ids[:n], n, alpha=2.0, beta=2)
    assert torch.equal(out_ids[:n], ref_ids) and torch.equal(out_w[:n], ref_w)
    assert torch.equal(touched, ref_touched)


def test_num_valid_above_rows_is_clamped_and_zero_is_identity():
    shape = Shape(16, 2)
    x, w, ids, _ = make_batch(shape, 4, seed=4)
    a = _call(x, w, ids, 4)
    b = _call(x, w, ids, 99)
    assert all(torch.equal(p, q) for p, q in zip(a, b, strict=True))
    out_w, out_ids, touched = _call(x, w, ids, 0)
    assert (
        torch.equal(out_ids, ids) and torch.equal(out_w, w) and touched.tolist() == [0, 0, 0, 0, 0]
    )


def test_group_limits_respected():
    # DeepSeek-style: 64 experts in 8 groups of 8, the router picks 2 groups, k = 6.
    shape = Shape(64, 6, rule=WeightRule.PRESERVE_MASS, groups=8, topk_group=2)
    x, w, ids, _ = make_batch(shape, 24, seed=5, spread=1.0)
    out_w, out_ids, touched = _call(x, w, ids, 24, alpha=1.0, beta=2, groups=8,
                                    rule=WeightRule.PRESERVE_MASS)  # fmt: skip
    before_groups = [set((r // 8).tolist()) for r in ids]
    after_groups = [set((r // 8).tolist()) for r in out_ids]
    assert all(a <= b for a, b in zip(after_groups, before_groups, strict=True))
    assert int(touched[1]) < int(touched[0])  # and it did remap something


def test_ungrouped_remap_would_cross_groups():
    """Control for the test above: without the group limit the same batch leaves its groups, so
    the grouped test is not passing vacuously."""
    shape = Shape(64, 6, rule=WeightRule.PRESERVE_MASS, groups=8, topk_group=2)
    x, w, ids, _ = make_batch(shape, 24, seed=5, spread=1.0)
    _, out_ids, _ = _call(x, w, ids, 24, alpha=1.0, beta=2, rule=WeightRule.PRESERVE_MASS)
    crossed = [
        not set((a // 8).tolist()) <= set((b // 8).tolist())
        for a, b in zip(out_ids, ids, strict=True)
    ]
    assert any(crossed)


def _changed_rows(ids, out_ids):
    return [t for t in range(ids.shape[0]) if set(ids[t].tolist()) != set(out_ids[t].tolist())]


@pytest.mark.parametrize(
    "scoring,rule,scale",
    [
        (Scoring.SOFTMAX, WeightRule.RENORMALIZE, 1.0),
        (Scoring.SOFTMAX, WeightRule.PRESERVE_MASS, 1.0),
        (Scoring.SOFTMAX, WeightRule.RAW, 2.0),
        (Scoring.SIGMOID, WeightRule.RENORMALIZE, 2.5),
        (Scoring.SIGMOID, WeightRule.PRESERVE_MASS, 1.0),
        (Scoring.SIGMOID, WeightRule.RAW, 1.5),
        (Scoring.SIGMOID_BIAS, WeightRule.RENORMALIZE, 2.5),
        (Scoring.SIGMOID_BIAS, WeightRule.RAW, 1.0),
    ],
    ids=lambda v: v.name if hasattr(v, "name") else str(v),
)
def test_weight_rules(scoring, rule, scale):
    shape = Shape(32, 4, scoring, rule, scale=scale)
    x, w, ids, bias = make_batch(shape, 16, seed=6, spread=1.0)
    out_w, out_ids, _ = _call(x, w, ids, 16, alpha=1.0, beta=2, scoring=scoring, rule=rule,
                              scale=scale, bias=bias)  # fmt: skip
    changed = _changed_rows(ids, out_ids)
    assert changed, "the batch must remap some rows for this test to mean anything"
    for t in changed:
        sel = x[t, out_ids[t].long()].double()
        if scoring == Scoring.SOFTMAX:
            prob_all = torch.softmax(x[t].double(), 0)[out_ids[t].long()]
        else:
            prob_all = torch.sigmoid(sel)
        if rule == WeightRule.RAW:
            expected = prob_all * scale
        elif rule == WeightRule.RENORMALIZE:
            expected = prob_all / prob_all.sum() * scale
        else:
            expected = prob_all / prob_all.sum() * w[t].double().sum()
        torch.testing.assert_close(out_w[t].double(), expected, rtol=1e-5, atol=1e-6)
        # sorted as the router sorts: by selection score, best first
        sel_score = x[t, out_ids[t].long()] if bias is None else (
            torch.sigmoid(x[t]) + bias)[out_ids[t].long()]  # fmt: skip
        assert torch.all(sel_score[:-1] >= sel_score[1:])


@pytest.mark.parametrize("shape", FAMILY_SHAPES)
def test_output_contract(shape):
    for seed, T in [(10, 1), (11, 7), (12, 32), (13, 64)]:
        x, w, ids, bias = make_batch(shape, T, seed=seed)
        n = max(1, T - 2)
        out_w, out_ids, touched = remap(*op_args(shape, x, w, ids, bias, n))
        assert out_ids.dtype == ids.dtype and out_w.dtype == w.dtype
        assert out_ids.shape == ids.shape and out_w.shape == w.shape
        assert int(out_ids.min()) >= 0 and int(out_ids.max()) < shape.E
        assert all(len(set(r.tolist())) == shape.k for r in out_ids)
        assert torch.isfinite(out_w).all() and (out_w >= 0).all()
        before, after, keeps_top1, rows, moved = touched.tolist()
        # assignments moved: experts a valid row uses that it had not chosen
        assert moved == sum(len(set(out_ids[t].tolist()) - set(ids[t].tolist())) for t in range(n))
        assert shape.k <= after <= min(shape.E, n * shape.k, before) or n == 0
        assert rows == n
        from lynx_ops.reference import selection_scores

        sel = selection_scores(x, bias, shape.scoring)
        keeps = 0
        for t in range(n):  # top-1: the vanilla expert(s) with the highest selection score
            best = max(float(sel[t, e]) for e in ids[t].tolist())
            top = {e for e in ids[t].tolist() if float(sel[t, e]) == best}
            keeps += bool(top & set(out_ids[t].tolist()))
        assert keeps_top1 == keeps
        # unchanged rows are returned bit for bit
        for t in range(T):
            if set(ids[t].tolist()) == set(out_ids[t].tolist()):
                assert torch.equal(out_ids[t], ids[t]) and torch.equal(out_w[t], w[t])
        # a row whose bin 0 holds at most k experts keeps its top-1 and all of its bin-0 experts
        s = x.float() if bias is None else torch.logit((torch.sigmoid(x.float()) + bias).clamp(
            1e-6, 1 - 1e-6))  # fmt: skip
        for t in range(n):
            if shape.groups:
                continue  # bin 0 is taken among allowed experts there; covered by the group test
            bin0 = torch.nonzero(torch.ceil(shape.alpha * (s[t] - s[t].max())) == 0).flatten()
            if len(bin0) <= shape.k:
                assert set(bin0.tolist()) <= set(out_ids[t].tolist())
                assert int(out_ids[t, 0]) == int(s[t].argmax())


def test_remap_reduces_experts_on_a_shared_router():
    """On a Qwen3-shaped batch of 32 with shared favourites, the union shrinks substantially."""
    shape = Shape(128, 8, alpha=3.0, beta=2)
    x, w, ids, _ = make_batch(shape, 32, seed=21, spread=2.0)
    _, _, touched = remap(*op_args(shape, x, w, ids, None, 32))
    before, after = touched.tolist()[:2]
    assert after < 0.8 * before, (before, after)


@pytest.mark.parametrize(
    "mutate,match",
    [
        (lambda a: a.update(scores=a["scores"].to(torch.float64)), "scores dtype"),
        (lambda a: a.update(scores=a["scores"][0]), r"scores must be \[T, E\]"),
        (lambda a: a.update(topk_ids=a["topk_ids"].to(torch.int16)), "topk_ids dtype"),
        (lambda a: a.update(topk_weights=a["topk_weights"][:, :1]), "topk_weights must be"),
        (lambda a: a.update(num_valid=torch.tensor([1.0])), "num_valid"),
        (lambda a: a.update(alpha=0.0), "alpha=0.0"),
        (lambda a: a.update(beta=9), "beta=9"),
        (lambda a: a.update(scoring=7), "scoring=7"),
        (lambda a: a.update(weight_rule=5), "weight_rule=5"),
        (lambda a: a.update(scoring=int(Scoring.SIGMOID_BIAS)), "needs correction_bias"),
        (lambda a: a.update(num_expert_group=3), "num_expert_group=3"),
    ],
    ids=[
        "f64",
        "1d",
        "int16",
        "k-mismatch",
        "num_valid-float",
        "alpha",
        "beta",
        "scoring",
        "rule",
        "no-bias",
        "groups",
    ],  # fmt: skip
)
def test_bad_input_names_the_problem(mutate, match):
    x, w, ids, _ = make_batch(Shape(16, 2), 4, seed=0)
    a = dict(scores=x, topk_weights=w, topk_ids=ids, num_valid=torch.tensor([4]),
             correction_bias=None, alpha=1.0, beta=1, scoring=0, weight_rule=0, scale=1.0,
             num_expert_group=0)  # fmt: skip
    mutate(a)
    with pytest.raises(ValueError, match=match):
        remap(*a.values())


def test_score_ties_keep_the_routers_choice():
    """A lone row whose router broke a score tie towards the higher index (torch.topk on bf16 logits
    does) is returned unchanged: equal scores go to the vanilla experts before the lower index.
    Found on a trained model by the fidelity harness."""
    logits = torch.tensor([[0.0, 1.0, 0.5, 0.0, 0.0, 0.0, 0.5, 0.0]])
    ids = torch.tensor([[1, 6]], dtype=torch.int32)  # 6 rather than 2: same score
    weights = torch.softmax(logits[:, [1, 6]], dim=1)
    for n in (1, 2):  # also with a padding row present
        x = torch.cat([logits, logits.flip(1)])[:2]
        w = torch.cat([weights, weights])
        i = torch.cat([ids, torch.tensor([[6, 1]], dtype=torch.int32)])
        out_w, out_ids, touched = remap_ref(x[:n], w[:n], i[:n], torch.tensor([n]), None,
                                            3.0, 2, 0, 0, 1.0, 0)  # fmt: skip
        assert torch.equal(out_ids[0], ids[0]) and torch.equal(out_w[0], weights[0])
