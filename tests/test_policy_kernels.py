# SPDX-License-Identifier: Apache-2.0
"""The budget and keep_k0 Triton kernels against their references (which test_policies.py checks
against per-row Python implementations): family shapes, padding rows, every batch score, a
budget below the forced top-1s and above the union, on both launch shapes (one program; split
over blocks of rows, with small blocks so that several blocks share even a small batch). Under the Triton interpreter on CPU in CI,
compiled on a GPU in the cuda tier (there through the op, so its dispatch runs too). Ids and
experts-touched counts must match exactly; weights to the dtype's tolerance."""

from __future__ import annotations

import pytest
import torch

import lynx_ops  # noqa: F401
from lynx_ops.reference import budget_ref, keep_ref
from lynx_ops.routing import BatchScore, Scoring
from tests.helpers import (
    DEVICES,
    FAMILY_SHAPES,
    Shape,
    family_shape,
    make_batch,
    near_bin_edge,
    op_args,
    path_config,
    unranked_ids,
)

LAUNCHES = ["auto", "fused", "split"]


def _on(device, args):
    if device != "cuda":
        return args
    return tuple(a.cuda() if isinstance(a, torch.Tensor) else a for a in args)


def _check(want, got, args):
    w, ids, touched = (t.cpu() for t in got)
    assert torch.equal(ids, want[1]), "ids differ from the reference"
    assert torch.equal(touched, want[2]), f"experts touched {touched} != {want[2]}"
    torch.testing.assert_close(w, want[0])
    same = (ids == args[2]).all(dim=1)
    assert torch.equal(w[same], args[1][same])  # unchanged rows bit for bit


def _batch(shape: Shape, T: int, n: int, seed: int):
    for s in range(seed, seed + 50):  # SIGMOID_BIAS: skip batches with scores at a bin edge
        args = op_args(shape, *make_batch(shape, T, seed=s, spread=1.2), n)
        if not near_bin_edge(args):
            return args[:5]
    raise AssertionError("no clean batch")


def _launch(device, path, op, launcher, args):
    """The op itself on CUDA for the default launch (its dispatch runs too), else the launcher
    with the launch shape forced."""
    if device == "cuda" and path == "auto":
        return op(*_on(device, args))
    return launcher(*_on(device, args), config=path_config(path, args))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("path", LAUNCHES)
@pytest.mark.parametrize("shape", FAMILY_SHAPES)
def test_keep_kernel_matches_reference(device, path, shape):
    from lynx_ops.kernels.policies import keep_triton

    for T, n, seed in [(16, 13, 0), (4, 4, 1), (1, 1, 2)]:
        base = _batch(shape, T, n, seed)
        for k0 in sorted({1, max(1, shape.k // 2), shape.k}):
            args = (*base, torch.tensor([k0], dtype=torch.int32), int(shape.scoring),
                    int(shape.rule), shape.scale, shape.groups)  # fmt: skip
            got = _launch(device, path, torch.ops.lynx.remap_keep, keep_triton, args)
            _check(keep_ref(*args), got, args)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("path", LAUNCHES)
@pytest.mark.parametrize("family", ["qwen3-30b-a3b", "deepseek-v3"])
def test_keep_kernel_identity_rung_copies_the_router_routing(device, path, family):
    """k0 = k exits early in both launch shapes: ids and weights come back bit for bit, padding
    rows included, even for ids that are not the rows' top-k by score (where a selection would
    move them), and `touched` matches the reference's; over several blocks on the split path."""
    from lynx_ops.kernels.policies import keep_triton

    shape = family_shape(family)
    for T, n in [(16, 13), (40, 37), (1, 1)]:
        x, _, _, _, bias = _batch(shape, T, n, 4)
        ids, w = unranked_ids(shape, T, seed=11 + T)
        w = w.to(torch.bfloat16)
        args = (x, w, ids, torch.tensor([n], dtype=torch.int32), bias,
                torch.tensor([shape.k], dtype=torch.int32), int(shape.scoring), int(shape.rule),
                shape.scale, shape.groups)  # fmt: skip
        want = keep_ref(*args)
        assert torch.equal(want[1], args[2]) and torch.equal(want[0], w)
        got = _launch(device, path, torch.ops.lynx.remap_keep, keep_triton, args)
        _check(want, got, args)
        assert torch.equal(got[0].cpu(), w)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("path", LAUNCHES)
@pytest.mark.parametrize("shape", FAMILY_SHAPES)
@pytest.mark.parametrize("score", list(BatchScore))
def test_budget_kernel_matches_reference(device, path, shape, score):
    from lynx_ops.kernels.policies import budget_triton

    for T, n, budget, fraction, seed in [(16, 13, 6, 1.0, 0), (8, 8, 1, 1.0, 1),
                                         (16, 16, 10**6, 0.6, 2), (2, 1, 3, 1.0, 3)]:  # fmt: skip
        base = _batch(shape, T, n, seed)
        k_t = torch.tensor([budget], dtype=torch.int32)
        args = (*base, k_t, fraction, int(score), shape.alpha, shape.beta, int(shape.scoring),
                int(shape.rule), shape.scale, shape.groups)  # fmt: skip
        got = _launch(device, path, torch.ops.lynx.remap_budget, budget_triton, args)
        _check(budget_ref(*args), got, args)


@pytest.mark.parametrize("device", DEVICES)
def test_budget_fraction_ceiling_agrees_with_the_reference_at_exact_products(device):
    """fraction 0.6 of a union of 20 is 12 in double arithmetic but 13 in float32: the kernel
    reads the fraction in float64, as the reference computes it."""
    from lynx_ops.kernels.policies import budget_triton

    shape = Shape(32, 4)
    for seed in range(40):
        x, w, ids, _ = make_batch(shape, 8, seed=seed, spread=1.2)
        if len(set(ids.flatten().tolist())) == 20:
            break
    else:
        pytest.skip("no batch with a union of 20 experts")
    n = torch.tensor([8], dtype=torch.int32)
    args = (x, w, ids, n, None, torch.tensor([100], dtype=torch.int32), 0.6, 0, 1.0, 2,
            int(Scoring.SOFTMAX), 0, 1.0, 0)  # fmt: skip
    launch = torch.ops.lynx.remap_budget if device == "cuda" else budget_triton
    want = budget_ref(*args)
    _check(want, launch(*_on(device, args)), args)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("path", ["auto", "split"])
@pytest.mark.parametrize(
    "family,T,n", [("qwen3-30b-a3b", 200, 150), ("deepseek-v2-lite", 300, 263)], ids=str
)
def test_policies_on_a_large_batch_over_many_blocks(device, path, family, T, n):
    """T = 200 of which 150 valid on the Qwen3 shape: the split path with 25 blocks (auto) or 100
    (small blocks: more partials than one load of `_sum_partials` holds); T = 300 at 64 experts:
    the large-batch 1024-score tile of kernels/configs.py (auto). Both policies."""
    from lynx_ops.kernels.policies import budget_triton, keep_triton

    shape = family_shape(family)
    base = _batch(shape, T, n, 0)
    keep = (*base, torch.tensor([4]), int(shape.scoring), int(shape.rule), shape.scale,
            shape.groups)  # fmt: skip
    _check(keep_ref(*keep), _launch(device, path, torch.ops.lynx.remap_keep, keep_triton, keep),
           keep)  # fmt: skip
    for score in BatchScore:
        k_t = torch.tensor([24], dtype=torch.int32)
        budget = (*base, k_t, 1.0, int(score), shape.alpha, shape.beta, int(shape.scoring),
                  int(shape.rule), shape.scale, shape.groups)  # fmt: skip
        got = _launch(device, path, torch.ops.lynx.remap_budget, budget_triton, budget)
        _check(budget_ref(*budget), got, budget)
