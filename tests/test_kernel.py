# SPDX-License-Identifier: Apache-2.0
"""The Triton kernel against the reference: family shapes, odd sizes, random inputs.

Runs under the Triton interpreter on CPU (`interpreter` tier, in CI) and compiled on a GPU (`cuda`
tier). Ids and experts-touched counts must match exactly; weights to the dtype's tolerance (the
kernel and the reference compute them with different fp32 operation orders).
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import lynx_ops  # noqa: F401
from lynx_ops.reference import remap_ref
from lynx_ops.routing import MAX_BETA, Scoring, WeightRule
from tests.helpers import (
    DEVICES,
    FAMILY_SHAPES,
    PATHS,
    Shape,
    clean_args,
    family_shape,
    make_batch,
    near_bin_edge,
    op_args,
    row_padded,
    run_kernel,
)


def assert_matches_reference(args, got):
    want = remap_ref(*args)
    w, ids, touched = got
    bad = (ids != want[1]).any(dim=1).nonzero().flatten()[:4].tolist()
    assert not bad, "ids differ from the reference in rows " + "; ".join(
        f"{r}: got {ids[r].tolist()} want {want[1][r].tolist()} vanilla {args[2][r].tolist()}"
        for r in bad
    )
    assert torch.equal(touched, want[2]), f"experts touched {touched} != {want[2]}"
    torch.testing.assert_close(w, want[0])
    # unchanged rows must be bitwise the vanilla ones in both
    same = (ids == args[2]).all(dim=1)
    assert torch.equal(w[same], args[1][same])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("shape", FAMILY_SHAPES)
@pytest.mark.parametrize("T,n", [(1, 1), (5, 3), (32, 32), (67, 50)], ids=lambda v: str(v))
def test_family_shapes(device, path, shape, T, n):
    args = clean_args(shape, T, n, seed=T * 131 + shape.E)
    assert_matches_reference(args, run_kernel(device, args, path))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("x_dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("id_dtype", [torch.int32, torch.int64], ids=str)
@pytest.mark.parametrize("w_dtype", [torch.float32, torch.bfloat16], ids=str)
def test_dtypes(device, x_dtype, id_dtype, w_dtype):
    shape = Shape(64, 6, alpha=2.0, beta=2)
    x, w, ids, bias = make_batch(shape, 24, seed=7, dtype=x_dtype, id_dtype=id_dtype,
                                 w_dtype=w_dtype)  # fmt: skip
    args = op_args(shape, x, w, ids, bias, 20)
    got = run_kernel(device, args)
    assert got[0].dtype == w_dtype and got[1].dtype == id_dtype
    assert_matches_reference(args, got)


@pytest.mark.parametrize("device", DEVICES)
def test_permuted_inputs(device):
    """Non-contiguous scores, weights and ids (column-major views) give the same result."""
    shape = Shape(32, 4)
    x, w, ids, bias = make_batch(shape, 16, seed=8)
    xt = x.t().contiguous().t()
    wt, idt = w.t().contiguous().t(), ids.t().contiguous().t()
    assert not xt.is_contiguous() and not idt.is_contiguous()
    args = op_args(shape, xt, wt, idt, bias, 16)
    assert_matches_reference(args, run_kernel(device, args))
    assert torch.equal(
        run_kernel(device, args)[1], run_kernel(device, op_args(shape, x, w, ids, bias, 16))[1]
    )


QWEN15 = family_shape("qwen1.5-moe-a2.7b")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("path", ["fused", "split"])
def test_row_padded_scores(device, path):
    """Scores with a padded row stride (Qwen1.5's E = 60 in a stride of 64) give what the
    contiguous scores give; the gap holds huge logits that would win every row if it were read."""
    x, w, ids, bias = make_batch(QWEN15, 24, seed=12, spread=1.2)
    xp = row_padded(x, 64, 1e4)
    assert xp.stride() == (64, 1)
    packed = op_args(QWEN15, x, w, ids, bias, 21)
    got = run_kernel(device, op_args(QWEN15, xp, w, ids, bias, 21), path)
    assert_matches_reference(packed, got)
    assert torch.equal(got[1], torch.ops.lynx.remap(*packed)[1])


def test_row_padded_scores_on_the_cpu_op():
    x, w, ids, bias = make_batch(QWEN15, 24, seed=13, spread=1.2)
    args = op_args(QWEN15, row_padded(x, 64, 1e4), w, ids, bias, 21)
    assert_matches_reference(op_args(QWEN15, x, w, ids, bias, 21), torch.ops.lynx.remap(*args))


@pytest.mark.parametrize("device", DEVICES)
def test_padding_garbage(device):
    shape = Shape(128, 8, alpha=3.0)
    x, w, ids, bias = make_batch(shape, 40, seed=9)
    x[30:] = float("nan")
    x[31, :5] = float("inf")
    w[30:] = 123.0
    args = op_args(shape, x, w, ids, bias, 30)
    got = run_kernel(device, args)
    assert torch.equal(got[1][30:], ids[30:]) and torch.equal(got[0][30:], w[30:])
    assert_matches_reference(args, got)


@pytest.mark.parametrize("device", DEVICES)
def test_multiple_row_blocks(device):
    """More rows than the fused path takes (E=256: 16 rows): the default split launch."""
    shape = Shape(256, 8, Scoring.SIGMOID_BIAS, groups=8, topk_group=4, scale=2.5)
    args = clean_args(shape, 130, 117, seed=10)
    assert_matches_reference(args, run_kernel(device, args))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "shape",
    [p for p in FAMILY_SHAPES if p.id in ("qwen1.5-moe-a2.7b", "deepseek-v2-lite")],
)
def test_large_batch_at_64_experts(device, shape):
    """From 256 padded rows on, 64-expert shapes take the 1024-score split tile
    (kernels/configs.py): the default launch there must equal the reference."""
    args = clean_args(shape, 300, 263, seed=shape.E + 7)
    assert_matches_reference(args, run_kernel(device, args))


@pytest.mark.parametrize(
    "rows,experts,fused,block_t",
    [
        (1, 128, True, 1),  # fused: one program
        (8, 128, True, 8),  # 1024 padded scores: still one program
        (32, 128, False, 2),  # split: 4096 scores / 32 blocks = 128 -> the 256-score minimum
        (128, 128, False, 4),  # 16384 / 32 = 512-score tiles
        (256, 128, False, 8),  # 1024-score tile by the 32-block rule already
        (128, 60, False, 4),  # E=60 pads to 64: 8192 / 32 = 256-score tiles
        (256, 60, False, 16),  # the large-batch tile at 64 experts: 1024, not the rule's 512
        (256, 8, False, 32),  # under 64 experts the rule stands: 2048 / 32 -> 256
    ],
)
def test_launch_config_choices(rows, experts, fused, block_t):
    from lynx_ops.kernels.configs import SPLIT_VARIANT, launch_config

    cfg = launch_config(rows, experts, 4)
    assert (cfg.fused, cfg.block_t) == (fused, block_t)
    assert cfg.variant == (0 if fused else SPLIT_VARIANT)


@st.composite
def _cases(draw):
    E = draw(st.integers(2, 160))
    k = draw(st.integers(1, min(E, 8)))
    scoring = draw(st.sampled_from(list(Scoring)))
    groups = 0
    if E % 4 == 0 and draw(st.booleans()):
        groups = draw(st.sampled_from([g for g in (2, 4, 8) if E % g == 0 and E // g >= 2]))
    rule = draw(st.sampled_from(list(WeightRule)))
    shape = Shape(E, k, scoring, rule, groups=groups, topk_group=max(1, groups // 2),
                  scale=draw(st.sampled_from([1.0, 2.5])),
                  alpha=draw(st.floats(0.25, 4.0)), beta=draw(st.integers(1, MAX_BETA)))  # fmt: skip
    if groups and k > (E // groups) * shape.topk_group:
        shape = Shape(E, k, scoring, rule, scale=shape.scale, alpha=shape.alpha, beta=shape.beta)
    T = draw(st.integers(1, 48))
    n = draw(st.integers(0, T))
    spread = draw(st.sampled_from([0.3, 1.0, 3.0]))
    dtype = draw(st.sampled_from([torch.float32, torch.bfloat16]))
    seed = draw(st.integers(0, 2**31 - 1))
    return shape, T, n, spread, dtype, seed


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("path", ["fused", "split"])
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=_cases())
def test_random_against_reference(device, path, case):
    shape, T, n, spread, dtype, seed = case
    x, w, ids, bias = make_batch(shape, T, seed=seed, spread=spread, dtype=dtype)
    args = op_args(shape, x, w, ids, bias, n)
    assume(not near_bin_edge(args))
    assert_matches_reference(args, run_kernel(device, args, path))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("path", ["fused", "split"])
def test_score_ties_keep_the_routers_choice(device, path):
    """Equal bf16 scores: the kernel keeps the router's pick, as the reference does."""
    torch.manual_seed(0)
    x = (torch.randn(6, 32) * 2).to(torch.bfloat16).round()  # integer logits: many exact ties
    w, ids = torch.softmax(x.float(), dim=1).topk(4, dim=1)
    ids = ids.to(torch.int32).flip(1)  # vanilla order need not be sorted
    # replace each row's last pick by the highest-index expert with the same score
    for t in range(6):
        same = (x[t] == x[t, ids[t, -1]]).nonzero().flatten()
        candidates = [e for e in same.tolist() if e not in ids[t].tolist()]
        if candidates:
            ids[t, -1] = candidates[-1]
    for n in (1, 6):
        args = (x, w, ids, torch.tensor([n]), None, 3.0, 2, 0, 0, 1.0, 0)
        got = run_kernel(device, args, path)
        assert_matches_reference(args, got)
        if n == 1:
            assert torch.equal(got[1][0], ids[0])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("path", ["fused", "split"])
@pytest.mark.parametrize("shape", FAMILY_SHAPES)
def test_non_finite_rows_keep_vanilla_routing(device, path, shape):
    """Rows with a NaN or inf logit (seen on an H100 with a dummy FP8 model, whose router made NaN
    logits) keep their vanilla ids and weights bit for bit and vote for exactly those experts; the
    other rows are remapped as the reference says."""
    x, w, ids, bias = make_batch(shape, 24, seed=5)
    x[3, -1] = float("nan")
    x[8] = float("nan")
    x[11, 0] = float("inf")
    x[15, 2] = float("-inf")
    bad = torch.tensor([3, 8, 11, 15])
    args = op_args(shape, x, w, ids, bias, 24)
    got = run_kernel(device, args, path)
    assert torch.equal(got[1][bad].cpu(), ids[bad]) and torch.equal(got[0][bad].cpu(), w[bad])
    assert torch.isfinite(got[0]).all()
    assume_clean = not near_bin_edge(args)
    if assume_clean:
        assert_matches_reference(args, got)
    # the bad rows' experts are read anyway, so they stay in the batch's union
    assert set(ids[bad].flatten().tolist()) <= set(got[1].cpu().flatten().tolist())


DEEPSEEK_V3 = family_shape("deepseek-v3")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("path", PATHS)
def test_int64_num_valid_beyond_int32_counts_every_row(device, path):
    """An int64 row count past 2**31 means all rows, as in the reference (the kernel used to
    truncate it to int32 first: 2**31 became 0 valid rows)."""
    shape = FAMILY_SHAPES[0].values[0]
    x, w, ids, bias = make_batch(shape, 12, seed=3)
    args = list(op_args(shape, x, w, ids, bias, 12))
    args[3] = torch.tensor([2**31], dtype=torch.int64)
    got = run_kernel(device, tuple(args), path)
    want = remap_ref(*args)
    assert int(want[2][3]) == 12  # the reference counts 12 valid rows
    assert torch.equal(got[2].cpu(), want[2]) and torch.equal(got[1].cpu(), want[1])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("path", PATHS)
def test_nan_correction_bias_keeps_every_row_vanilla_on_both_paths(device, path):
    """A NaN in the correction bias poisons that expert's score in every row: both paths keep
    every row's vanilla routing bit for bit (the CUDA path's clamp used to hide the NaN, so the two
    chose different experts)."""
    shape = DEEPSEEK_V3
    x, w, ids, bias = make_batch(shape, 16, seed=4)
    bias = bias.clone()
    bias[5] = float("nan")
    args = op_args(shape, x, w, ids, bias, 16)
    got = run_kernel(device, args, path)
    want = remap_ref(*args)
    for out in (got, want):
        assert torch.equal(out[1].cpu(), ids) and torch.equal(out[0].cpu(), w)
    assert torch.equal(got[2].cpu(), want[2])


def test_launch_config_refuses_an_unknown_selection_variant():
    from lynx_ops.kernels.configs import LaunchConfig

    assert LaunchConfig(True, 8, 1, variant=1).variant == 1
    with pytest.raises(ValueError, match="variant must be 0 or 1, got 2"):
        LaunchConfig(True, 8, 1, variant=2)
