# SPDX-License-Identifier: Apache-2.0
"""The registered op: opcheck, torch.compile(fullgraph=True) against eager, CUDA-graph replay.

opcheck proves the registration is sound (schema, fake implementation, autograd declarations,
compile friendliness); it does not prove numerics, which tests/test_kernel.py and
tests/test_reference.py cover against the reference.
"""

from __future__ import annotations

import pytest
import torch

import lynx_ops  # noqa: F401
from lynx_ops.reference import remap_ref
from lynx_ops.routing import Scoring, WeightRule
from tests.conftest import HAS_CUDA
from tests.helpers import Shape, clean_args, make_batch, op_args

OP_DEVICES = [
    "cpu",
    pytest.param("cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(not HAS_CUDA, reason="GPU")]),
]


def _to(args, device):
    return tuple(a.to(device) if isinstance(a, torch.Tensor) else a for a in args)


@pytest.mark.parametrize("device", OP_DEVICES)
@pytest.mark.parametrize("x_dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("id_dtype", [torch.int32, torch.int64], ids=str)
@pytest.mark.parametrize("w_dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_opcheck_dtypes(device, x_dtype, id_dtype, w_dtype):
    shape = Shape(32, 4)
    args = op_args(shape, *make_batch(shape, 12, seed=1, dtype=x_dtype, id_dtype=id_dtype,
                                      w_dtype=w_dtype), 10)  # fmt: skip
    torch.library.opcheck(torch.ops.lynx.remap.default, _to(args, device))


@pytest.mark.parametrize("device", OP_DEVICES)
@pytest.mark.parametrize(
    "shape",
    [
        Shape(256, 8, Scoring.SIGMOID_BIAS, groups=8, topk_group=4, scale=2.5),
        Shape(16, 1, Scoring.SIGMOID, WeightRule.PRESERVE_MASS, beta=4),
    ],
    ids=["sigmoid-bias-grouped", "sigmoid-top1"],
)
def test_opcheck_scorings(device, shape):
    args = clean_args(shape, 9, 9, seed=2)
    torch.library.opcheck(torch.ops.lynx.remap.default, _to(args, device))


@pytest.mark.parametrize("device", OP_DEVICES)
def test_opcheck_permuted_and_empty(device):
    shape = Shape(32, 4)
    x, w, ids, _ = make_batch(shape, 12, seed=3)
    permuted = op_args(shape, x.t().contiguous().t(), w.t().contiguous().t(),
                       ids.t().contiguous().t(), None, 12)  # fmt: skip
    torch.library.opcheck(torch.ops.lynx.remap.default, _to(permuted, device))
    empty = op_args(shape, x[:0], w[:0], ids[:0], None, 0)
    torch.library.opcheck(torch.ops.lynx.remap.default, _to(empty, device))
    out = torch.ops.lynx.remap(*_to(empty, device))
    assert out[0].shape == (0, 4) and out[2].tolist() == [0, 0, 0, 0, 0]


@pytest.mark.parametrize("device", OP_DEVICES)
def test_compile_fullgraph_equals_eager(device):
    """A router-like function around the op, compiled with fullgraph=True, equals eager exactly."""
    shape = Shape(64, 6, alpha=2.0)

    def route(x, w, ids, num_valid):
        # Vanilla weights come in from outside: Inductor fuses softmax/renormalise differently
        # from eager (1-ulp differences) and that is not what this test is about.
        out_w, out_ids, touched = torch.ops.lynx.remap(
            x, w, ids, num_valid, None, 2.0, 2, 0, 0, 1.0, 0
        )
        return out_w * 2.0, out_ids.long() + 1, touched

    compiled = torch.compile(route, fullgraph=True, dynamic=False)
    for T, n in [(16, 16), (16, 9)]:
        x, w, ids = (a.to(device) for a in make_batch(shape, T, seed=T + n)[:3])
        num_valid = torch.tensor([n], dtype=torch.int32, device=device)
        eager, comp = route(x, w, ids, num_valid), compiled(x, w, ids, num_valid)
        assert torch.equal(eager[1], comp[1]) and torch.equal(eager[2], comp[2])
        torch.testing.assert_close(eager[0], comp[0], rtol=0, atol=0)


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="needs a GPU")
def test_cuda_graph_replay_follows_the_data():
    """Capture once at padded size T with static buffers; then change the logits, the valid-row
    count and the padding contents in place, replay, and compare with the reference each time."""
    shape = Shape(128, 8, alpha=3.0)
    T = 64
    x, w, ids, _ = (a.cuda() if a is not None else None for a in make_batch(shape, T, seed=0))
    num_valid = torch.tensor([T], dtype=torch.int32, device="cuda")
    static = (x, w, ids, num_valid, None, shape.alpha, shape.beta, 0, 0, 1.0, 0)
    from lynx_ops.stats import ExpertStats

    stats = ExpertStats(num_layers=1, device="cuda")
    torch.ops.lynx.remap(*static)  # warm-up compiles the kernel before capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = torch.ops.lynx.remap(*static)
        stats.record(0, out[2])  # the per-layer counters must keep counting on replay
    stats.reset()
    sums = [0, 0]
    for step, n in enumerate([64, 17, 1, 40, 0, 64]):
        nx, nw, nids, _ = make_batch(shape, T, seed=100 + step)
        nx[n:] = float("nan")  # garbage in the padding rows
        x.copy_(nx)
        w.copy_(nw)
        ids.copy_(nids)
        num_valid.fill_(n)
        graph.replay()
        want = remap_ref(nx, nw, nids, torch.tensor([n]), None, shape.alpha, shape.beta, 0, 0,
                         1.0, 0)  # fmt: skip
        assert torch.equal(out[1].cpu(), want[1]), f"step {step}, n={n}"
        assert torch.equal(out[2].cpu(), want[2])
        torch.testing.assert_close(out[0].cpu(), want[0])
        sums = [sums[0] + int(want[2][0]), sums[1] + int(want[2][1])]
    snap = stats.snapshot()[0]
    assert (snap.calls, snap.experts_before, snap.experts_after) == (6, *sums)


@pytest.mark.parametrize("device", OP_DEVICES)
def test_expert_stats_accumulate_per_layer(device):
    from lynx_ops.stats import ExpertStats

    shape = Shape(64, 6, alpha=2.0)
    stats = ExpertStats(num_layers=3, device=device)
    expected = {0: [0, 0, 0], 2: [0, 0, 0]}
    for layer, seed in [(0, 1), (2, 2), (0, 3)]:
        args = _to(op_args(shape, *make_batch(shape, 16, seed=seed), 16), device)
        touched = torch.ops.lynx.remap(*args)[2]
        stats.record(layer, touched)
        want = remap_ref(*_to(args, "cpu"))[2].tolist()
        expected[layer] = [expected[layer][0] + 1, expected[layer][1] + want[0],
                           expected[layer][2] + want[1]]  # fmt: skip
    snap = stats.snapshot()
    assert [snap[0].calls, snap[0].experts_before, snap[0].experts_after] == expected[0]
    assert [snap[2].calls, snap[2].experts_before, snap[2].experts_after] == expected[2]
    assert snap[1].calls == 0 and snap[0].mean_after < snap[0].mean_before


def test_expert_stats_made_in_inference_mode_reset_outside():
    """vLLM runs the forward under inference mode; a layer whose counters are first made there (FP8
    layers on an H100) must still be reset between benchmark phases, outside it."""
    from lynx_ops.stats import ExpertStats

    with torch.inference_mode():
        stats = ExpertStats(num_layers=1, device="cpu")
        stats.record(0, torch.tensor([5, 3, 2, 4, 1], dtype=torch.int32))
    assert stats.snapshot()[0].calls == 1
    stats.reset()  # raised "Inplace update to inference tensor outside InferenceMode" before
    assert stats.snapshot()[0].calls == 0 and stats.snapshot()[0].experts_before == 0
    with torch.inference_mode():
        stats.record(0, torch.tensor([5, 3, 2, 4, 1], dtype=torch.int32))
    assert stats.snapshot()[0].experts_after == 3


def _qwen3_args(T=6, n=6):
    from tests.helpers import FAMILY_SHAPES, make_batch, op_args

    shape = FAMILY_SHAPES[0].values[0]
    x, w, ids, bias = make_batch(shape, T, seed=1)
    return list(op_args(shape, x, w, ids, bias, n))


@pytest.mark.parametrize("scale", [float("inf"), float("nan"), 0.0, -1.0])
def test_non_finite_or_non_positive_scale_is_rejected(scale):
    args = _qwen3_args()
    args[9] = scale
    with pytest.raises(ValueError, match="scale=.* must be a finite number > 0"):
        torch.ops.lynx.remap(*args)


@pytest.mark.parametrize(
    "num_valid, match",
    [
        (torch.tensor([4, 5]), r"num_valid must hold one int32/int64 value \(the number of valid "
                               r"rows\), got shape \(2,\) dtype torch.int64"),
        (torch.tensor([4.0]), r"num_valid must hold one int32/int64 value .* dtype torch.float32"),
        (4, r"num_valid must be a one-element int32/int64 tensor on cpu .* got int 4"),
    ],
)  # fmt: skip
def test_a_bad_num_valid_is_named(num_valid, match):
    """The op's own check (the op's schema refuses a plain int before it, in its own words)."""
    from lynx_ops.ops import check_remap_inputs

    args = _qwen3_args()
    args[3] = num_valid
    with pytest.raises(ValueError, match=match):
        check_remap_inputs(*args)


def test_out_of_range_or_duplicate_ids_are_rejected_on_cpu():
    args = _qwen3_args()
    bad = args[2].clone()
    bad[2, 1] = 128
    with pytest.raises(ValueError, match=r"topk_ids must be in \[0, E=128\), got values in"):
        torch.ops.lynx.remap(*args[:2], bad, *args[3:])
    dup = args[2].clone()
    dup[1, 1] = dup[1, 0]
    with pytest.raises(ValueError, match="same expert twice"):
        torch.ops.lynx.remap(*args[:2], dup, *args[3:])
    torch.ops.lynx.remap(*args)  # the router's own ids pass


def test_policy_scalars_are_named_as_the_op_schema_names_them():
    """Policy.op_args() is the op's scalar tail, named: its fields are the schema's arguments
    after the five tensors, in order, so the two cannot drift apart."""
    from lynx_ops.registry.policy import Policy
    from lynx_ops.routing import RemapScalars, Scoring, WeightRule

    schema = torch.ops.lynx.remap.default._schema
    assert tuple(a.name for a in schema.arguments[5:]) == RemapScalars._fields
    p = Policy("f", alpha=2.0, beta=3, scoring=Scoring.SIGMOID_BIAS,
               weight_rule=WeightRule.PRESERVE_MASS, scale=2.5, num_expert_group=8)  # fmt: skip
    assert p.op_args() == RemapScalars(2.0, 3, int(Scoring.SIGMOID_BIAS),
                                       int(WeightRule.PRESERVE_MASS), 2.5, 8)  # fmt: skip
    assert p.op_args().scale == 2.5 and p.op_args().num_expert_group == 8
