# SPDX-License-Identifier: Apache-2.0
"""Input builders, the family shape table and device parametrisation shared by the tests."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from lynx_ops.reference import selection_scores, vanilla_group_mask
from lynx_ops.routing import Scoring, WeightRule
from tests.conftest import HAS_CUDA, INTERPRET


@dataclasses.dataclass(frozen=True)
class Shape:
    """One router shape: E experts, top-k, scoring, weight rule, groups (0 = ungrouped)."""

    E: int
    k: int
    scoring: Scoring = Scoring.SOFTMAX
    rule: WeightRule = WeightRule.RENORMALIZE
    groups: int = 0
    topk_group: int = 0
    scale: float = 1.0
    alpha: float = 1.0
    beta: int = 2


# One row per family, (E, k) from the real checkpoints' configs; alpha/beta from ALGORITHM.md.
FAMILY_SHAPES = [
    pytest.param(Shape(128, 8, alpha=3.0, beta=2), id="qwen3-30b-a3b"),
    pytest.param(
        Shape(64, 8, rule=WeightRule.PRESERVE_MASS, alpha=3.0, beta=4), id="qwen2-57b-a14b"
    ),
    pytest.param(
        Shape(60, 4, rule=WeightRule.PRESERVE_MASS, alpha=3.0, beta=4), id="qwen1.5-moe-a2.7b"
    ),
    pytest.param(Shape(8, 2, alpha=0.7, beta=1), id="mixtral-8x7b"),
    pytest.param(
        Shape(160, 6, rule=WeightRule.PRESERVE_MASS, groups=8, topk_group=3, beta=2),
        id="deepseek-v2",
    ),
    pytest.param(Shape(64, 6, rule=WeightRule.PRESERVE_MASS, beta=2), id="deepseek-v2-lite"),
    pytest.param(
        Shape(256, 8, Scoring.SIGMOID_BIAS, groups=8, topk_group=4, scale=2.5, beta=2),
        id="deepseek-v3",
    ),
    pytest.param(Shape(128, 4, alpha=3.0, beta=2), id="gpt-oss-120b"),
    pytest.param(
        Shape(16, 1, Scoring.SIGMOID, WeightRule.PRESERVE_MASS, beta=4), id="llama4-scout"
    ),
    pytest.param(Shape(7, 3, beta=3), id="odd-e7-k3"),
    pytest.param(Shape(33, 5, Scoring.SIGMOID, WeightRule.RAW, scale=1.5), id="odd-e33-k5-raw"),
    pytest.param(Shape(48, 4, rule=WeightRule.RAW, beta=1), id="odd-e48-softmax-raw"),
]


def family_shape(name: str) -> Shape:
    """The FAMILY_SHAPES entry of that id (e.g. "qwen1.5-moe-a2.7b")."""
    return next(p.values[0] for p in FAMILY_SHAPES if p.id == name)


def vanilla_routing(x: torch.Tensor, shape: Shape, bias: torch.Tensor | None = None):
    """What the family's router returns: (topk_weights fp32, topk_ids int64), written here
    independently of lynx_ops (grouped top-k as vLLM does it: best groups, then top-k inside)."""
    x = x.float()
    T, E = x.shape
    if shape.scoring == Scoring.SOFTMAX:
        prob = torch.softmax(x, dim=1)
        choice = prob
    else:
        prob = torch.sigmoid(x)
        choice = prob + bias.float() if bias is not None else prob
    if shape.groups > 1:
        g = choice.view(T, shape.groups, -1)
        gscore = g.topk(2, dim=2).values.sum(2) if bias is not None else g.max(2).values
        gsel = gscore.topk(shape.topk_group, dim=1).indices
        gmask = torch.zeros_like(gscore, dtype=torch.bool).scatter_(1, gsel, True)
        choice = choice.masked_fill(~gmask.repeat_interleave(E // shape.groups, 1), float("-inf"))
    ids = choice.topk(shape.k, dim=1).indices
    w = prob.gather(1, ids)
    if shape.rule == WeightRule.RENORMALIZE:
        w = w / w.sum(1, keepdim=True) * shape.scale
    elif shape.rule == WeightRule.RAW:
        w = w * shape.scale
    return w, ids


def unranked_ids(shape: Shape, T: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """int32 ids that are not the rows' top-k by score (distinct random experts per row) and
    float32 weights that are no function of them: only an identity returns them unchanged."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.stack([torch.randperm(shape.E, generator=g)[: shape.k] for _ in range(T)])
    return ids.to(torch.int32), torch.rand(T, shape.k, generator=g)


def make_batch(shape: Shape, T: int, *, seed: int, spread: float = 2.0, dtype=torch.float32,
               id_dtype=torch.int32, w_dtype=torch.float32, device="cpu"):  # fmt: skip
    """Router logits with a realistic spread (std `spread` logits plus a per-expert skew so the
    batch shares favourites), the vanilla routing, and the bias where the family has one."""
    gen = torch.Generator().manual_seed(seed)
    skew = torch.randn(shape.E, generator=gen) * 0.5 * spread
    x = (torch.randn(T, shape.E, generator=gen) * spread + skew).to(dtype)
    bias = None
    if shape.scoring == Scoring.SIGMOID_BIAS:
        bias = (torch.rand(shape.E, generator=gen) - 0.5) * 0.2
    w, ids = vanilla_routing(x, shape, bias)
    to = dict(device=device)
    return (
        x.to(**to),
        w.to(w_dtype).to(**to),
        ids.to(id_dtype).to(**to),
        None if bias is None else bias.to(**to),
    )


def op_args(shape: Shape, x, w, ids, bias, n: int):
    num_valid = torch.tensor([n], dtype=torch.int32, device=x.device)
    return (x, w, ids, num_valid, bias, shape.alpha, shape.beta, int(shape.scoring),
            int(shape.rule), shape.scale, shape.groups)  # fmt: skip


def row_padded(x: torch.Tensor, width: int, fill: float) -> torch.Tensor:
    """`x` [T, E] as a view with row stride `width` > E and `fill` in the gap: the layout
    Inductor's stride padding gives a router's output (E = 60 becomes a row stride of 64)."""
    buf = torch.full((x.shape[0], width), fill, dtype=x.dtype, device=x.device)
    buf[:, : x.shape[1]] = x
    return buf[:, : x.shape[1]]


def near_bin_edge(args, margin: float = 1e-5) -> bool:
    """True if a transcendental selection score (SIGMOID_BIAS) puts some alpha*d within `margin` of a
    bin edge, or two scores of a row within `margin` of each other. There one ulp of exp/log, which
    differs between libm implementations, can legitimately move a bin or a tie, so an exact id
    comparison between two implementations is not meaningful. Plain-logit scorings (softmax,
    sigmoid) never need this: both implementations run the identical fp32 operations.
    """
    x, _, ids, _, bias, alpha, _, scoring, _, _, groups = args
    if scoring != Scoring.SIGMOID_BIAS:
        return False
    s = selection_scores(x.double().cpu(), bias.double().cpu(), scoring)
    mask = vanilla_group_mask(ids.cpu(), x.shape[1], groups)
    if mask is not None:
        s = s.masked_fill(~mask, float("-inf"))
    ad = alpha * (s - s.max(1, keepdim=True).values)
    edge = torch.isfinite(ad) & (ad != 0) & ((ad - ad.round()).abs() < margin)
    srt = s.sort(dim=1).values
    gaps = srt[:, 1:] - srt[:, :-1]
    # exact ties (clamped scores) stay exact ties in any implementation; only near-ties matter
    return bool(edge.any() or ((gaps > 0) & (gaps < margin) & torch.isfinite(gaps)).any())


def clean_args(shape: Shape, T: int, n: int, *, seed: int, **kw):
    """Op arguments from the first seed at or after `seed` that is not `near_bin_edge` (only
    SIGMOID_BIAS batches are ever skipped; deterministic for a given seed)."""
    for s in range(seed, seed + 50):
        args = op_args(shape, *make_batch(shape, T, seed=s, **kw), n)
        if not near_bin_edge(args):
            return args
    raise AssertionError("no clean batch in 50 seeds")


DEVICES = [
    pytest.param(
        "interpreter",
        marks=[
            pytest.mark.interpreter,
            pytest.mark.skipif(not INTERPRET, reason="TRITON_INTERPRET is off (a GPU is present)"),
        ],
    ),
    pytest.param(
        "cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(not HAS_CUDA, reason="needs a GPU")]
    ),
]


# "-v1": the selection variant of kernels/configs.LaunchConfig.variant (one key with the
# histogram's rank), which must equal the reference as the default does
PATHS = ["auto", "fused", "split", "fused-v1", "split-v1"]


def path_config(path: str, args):
    """Launch shape for a test: the default choice, forced fused, or forced split with small blocks
    (several blocks even for small T, so the cross-block partials and the last-block count run),
    optionally with a selection variant."""
    import dataclasses

    import triton

    from lynx_ops.kernels.configs import fused_config, split_config

    num_rows, num_experts = args[0].shape
    shape, _, variant = path.partition("-v")
    if shape == "fused":
        cfg = fused_config(num_rows, num_experts)
    elif shape == "split":
        cfg = split_config(num_experts, tile=2 * triton.next_power_of_2(num_experts))
    else:
        return None
    return dataclasses.replace(cfg, variant=int(variant or 0))


def run_kernel(device: str, args, path: str = "auto"):
    """The Triton kernel on `device`: the interpreter on CPU tensors, or compiled on CUDA. The
    "auto" path goes through the op on CUDA (its checks and dispatch included)."""
    if device == "cuda":
        args = tuple(a.cuda() if isinstance(a, torch.Tensor) else a for a in args)
    if device == "cuda" and path == "auto":
        return tuple(t.cpu() for t in torch.ops.lynx.remap(*args))
    from lynx_ops.kernels.remap import remap_triton

    return tuple(t.cpu() for t in remap_triton(*args, config=path_config(path, args)))
