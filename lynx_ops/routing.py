# SPDX-License-Identifier: Apache-2.0
"""Vocabulary shared by the op, the reference, the kernel and the registry.

The integer values are part of the op's schema (`scoring`, `weight_rule` are passed as ints so the
op stays a plain `torch.library` op that Dynamo and CUDA graphs handle without Python objects).
"""

from __future__ import annotations

import enum
from typing import NamedTuple

# Bins below the top that keep their own histogram column. The kernel packs one 12-bit count per
# column plus the bin into a 63-bit key; 5 columns x 12 bits + 3 bits fit. Deeper bins carry almost
# no router mass (with alpha=1 the fifth bin is already e^-4 below the top), so the cap costs nothing
# measurable; a policy asking for more is rejected, naming the field (registry and op alike).
MAX_BETA = 4
# `touched`, the op's third output: distinct experts before, after, rows keeping their top-1
# expert, valid rows, assignments moved (experts a valid row uses that it had not chosen).
TOUCHED_LEN = 5
# Largest padded batch the Triton kernel takes: histogram counts must fit their 12-bit fields.
# Larger decode batches (beyond vLLM's usual max_num_seqs) run the plain-torch implementation.
MAX_KERNEL_ROWS = 4095
# Expert index lives in 10 key bits in the kernel; larger routers use the reference.
MAX_KERNEL_EXPERTS = 1024


class RemapScalars(NamedTuple):
    """`lynx::remap`'s scalar arguments after its tensors, in schema order (ops.SCHEMA), so that
    `torch.ops.lynx.remap(x, w, ids, num_valid, bias, *scalars)` takes them as they are."""

    alpha: float
    beta: int
    scoring: int
    weight_rule: int
    scale: float
    num_expert_group: int


def packed_keys_fit(num_rows: int, num_experts: int) -> bool:
    """Whether the packed integer keys (12-bit histogram counts, 10-bit expert index) hold this
    padded batch: the Triton kernel and the CPU implementation take it, else the reference runs."""
    return num_rows <= MAX_KERNEL_ROWS and num_experts <= MAX_KERNEL_EXPERTS


class Scoring(enum.IntEnum):
    """How the router turns logits into selection scores (see docs/ALGORITHM.md, Notation)."""

    SOFTMAX = 0  # softmax routers: selection score is the raw logit
    SIGMOID = 1  # sigmoid routers (Llama 4): the raw logit before the sigmoid
    SIGMOID_BIAS = 2  # sigmoid + correction bias (DeepSeek-V3): logit(clamp(sigmoid(x) + b))


class WeightRule(enum.IntEnum):
    """How the final experts' weights are recomputed for a remapped row."""

    # Normalise the probabilities (softmax or sigmoid) over the selected experts, times `scale`.
    # Softmax + renormalize (Qwen3-MoE, Mixtral) and top-k-then-softmax (GPT-OSS) are both this.
    RENORMALIZE = 0
    # Probabilities of the selected experts rescaled to the vanilla row's weight sum: softmax without
    # renormalisation (Qwen2-MoE, DeepSeek-V2) and sigmoid top-1 (Llama 4). Any factor the router
    # applied (routed_scaling_factor) is carried by the vanilla sum, so `scale` is not used.
    PRESERVE_MASS = 1
    # Un-normalised probabilities times `scale` (full-softmax probability, or plain sigmoid).
    RAW = 2


class BatchScore(enum.IntEnum):
    """How the `budget` policy ranks experts for its K slots (integers: the same order on every
    rank and device)."""

    COUNT = 0  # valid rows naming the expert among their top-k
    HIST = 1  # Lynx's bin histogram (c[0], ..., c[beta]), compared lexicographically


SIGMOID_BIAS_EPS = 1e-6  # clamp for logit(sigmoid(x) + b) so the selection score stays finite
