# SPDX-License-Identifier: Apache-2.0
"""The CPU implementation (lynx_ops/kernels/cpu.py: one packed-key topk per ordering) against the
reference (lynx_ops/reference.py: one stable sort per key, written literally from
docs/ALGORITHM.md): equal ids, weights and counters, bit for bit, for every policy on every family
shape, with padding rows, heavy ties, non-finite rows and every beta the fast path takes."""

from __future__ import annotations

import pytest
import torch

import lynx_ops  # noqa: F401  (registers torch.ops.lynx)
from lynx_ops.reference import budget_ref, keep_ref, remap_ref
from lynx_ops.routing import MAX_BETA, BatchScore, WeightRule, packed_keys_fit
from tests.helpers import FAMILY_SHAPES, Shape, make_batch, op_args, vanilla_routing


def _equal(got, want):
    for g, w, name in zip(got, want, ("weights", "ids", "touched"), strict=True):
        assert g.dtype == w.dtype and g.shape == w.shape, name
        assert torch.equal(g, w), f"{name} differ:\n{g}\n{w}"


def _tied(shape: Shape, T: int, seed: int):
    """Logits on a coarse grid (many exact ties within rows and bins), with their routing."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randint(-3, 3, (T, shape.E), generator=gen).float() / 2
    bias = None
    if shape.scoring == 2:
        bias = torch.zeros(shape.E)
    w, ids = vanilla_routing(x, shape, bias)
    return x, w, ids.to(torch.int32), bias


def _cases(shape: Shape):
    for T, n in ((1, 1), (5, 3), (16, 16), (64, 40)):
        for seed in range(3):
            yield op_args(shape, *make_batch(shape, T, seed=seed, spread=1.2), n)
        yield op_args(shape, *_tied(shape, T, seed=T), n)


@pytest.mark.parametrize("x_dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("w_dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("id_dtype", [torch.int32, torch.int64], ids=str)
def test_every_dtype_equals_the_reference(x_dtype, w_dtype, id_dtype):
    """The rows' select runs in NumPy for the weight dtypes NumPy has and in torch for bfloat16:
    each must give the reference's dtypes and values bit for bit, for every policy."""
    shape = Shape(32, 4, rule=WeightRule.PRESERVE_MASS, alpha=3.0)
    for T, n in ((16, 16), (9, 6)):
        args = op_args(shape, *make_batch(shape, T, seed=T, spread=1.2, dtype=x_dtype,
                                          id_dtype=id_dtype, w_dtype=w_dtype), n)  # fmt: skip
        _equal(torch.ops.lynx.remap(*args), remap_ref(*args))
        keep = (*args[:5], torch.tensor([2], dtype=torch.int32), *args[7:])
        _equal(torch.ops.lynx.remap_keep(*keep), keep_ref(*keep))


@pytest.mark.parametrize("shape", FAMILY_SHAPES)
def test_bins_equals_the_reference(shape):
    for args in _cases(shape):
        _equal(torch.ops.lynx.remap(*args), remap_ref(*args))


@pytest.mark.parametrize("beta", list(range(1, MAX_BETA + 1)))
def test_every_beta(beta):
    shape = Shape(32, 4, alpha=3.0, beta=beta)
    for args in _cases(shape):
        _equal(torch.ops.lynx.remap(*args), remap_ref(*args))


def test_non_finite_rows_keep_their_routing_on_both():
    shape = Shape(32, 4, alpha=3.0)
    x, w, ids, bias = make_batch(shape, 16, seed=1)
    x[3, 5] = float("nan")
    x[7, 0] = float("inf")
    args = op_args(shape, x, w, ids, bias, 16)
    got = torch.ops.lynx.remap(*args)
    _equal(got, remap_ref(*args))
    assert torch.equal(got[1][3], ids[3]) and torch.equal(got[1][7], ids[7])


@pytest.mark.parametrize("shape", FAMILY_SHAPES)
@pytest.mark.parametrize("score", [BatchScore.COUNT, BatchScore.HIST])
def test_budget_equals_the_reference(shape, score):
    for args in _cases(shape):
        x, w, ids, n, bias, alpha, beta, scoring, rule, scale, groups = args
        for budget, fraction in ((1, 1.0), (shape.k + 3, 1.0), (10**6, 0.5), (10**6, 1.0)):
            b = torch.tensor([budget], dtype=torch.int32)
            call = (x, w, ids, n, bias, b, fraction, int(score), alpha, beta, scoring, rule,
                    scale, groups)  # fmt: skip
            _equal(torch.ops.lynx.remap_budget(*call), budget_ref(*call))


@pytest.mark.parametrize("shape", FAMILY_SHAPES)
def test_keep_equals_the_reference(shape):
    for args in _cases(shape):
        x, w, ids, n, bias, _, _, scoring, rule, scale, groups = args
        for k0 in sorted({1, max(1, shape.k // 2), shape.k}):
            call = (x, w, ids, n, bias, torch.tensor([k0]), scoring, rule, scale, groups)
            _equal(torch.ops.lynx.remap_keep(*call), keep_ref(*call))


def test_outside_the_fast_path_the_op_runs_the_reference():
    assert packed_keys_fit(4095, 1024)
    assert not packed_keys_fit(4096, 32) and not packed_keys_fit(16, 1025)
    shape = Shape(8, 2, alpha=0.7, beta=1)
    args = op_args(shape, *make_batch(shape, 4100, seed=0), 4000)
    _equal(torch.ops.lynx.remap(*args), remap_ref(*args))
