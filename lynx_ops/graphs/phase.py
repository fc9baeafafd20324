# SPDX-License-Identifier: Apache-2.0
"""Is this forward pass a uniform-decode step that Lynx may remap? Decided so that CUDA graphs obey.

Python in the MoE path runs in eager steps, warm-ups and graph captures; a replay runs none of it.
So the host-side decision below uses only facts that are identical for every batch that replays
the same graph (vLLM's vocabulary: "uniform decode" vs "mixed"):

* the runtime graph mode: NONE (eager) decides per step; PIECEWISE graphs are shared by mixed and
  decode batches, so they bypass; FULL graphs remap only when the configured mode keeps mixed
  batches out of FULL graphs (`FULL_AND_PIECEWISE`, `FULL_DECODE_ONLY`);
* `max_query_len` of the attention metadata (host int, fixed per captured graph):
  uniform decode means every request brings at most 1 + num_speculative_tokens tokens;
* no attention metadata (profiling runs, PIECEWISE captures): bypass.

The per-step fact, how many rows are real, is returned as a device view,
`query_start_loc[-1:]`, which the kernel reads when it runs (also on replay).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
import vllm.forward_context as forward_context
from vllm.config import CUDAGraphMode

# Reasons for a bypass, as logged and counted (host-side decisions only: eager steps, captures).
NO_CONTEXT = "no forward context"
PROFILE = "no attention metadata (profiling run or PIECEWISE capture)"
PIECEWISE = "PIECEWISE graph (shared with mixed batches)"
FULL_MIXED = "FULL graph that may hold mixed batches (cudagraph_mode=FULL)"
MIXED = "mixed or prefill batch"
UNKNOWN_METADATA = "attention metadata without max_query_len/query_start_loc"


@dataclasses.dataclass(frozen=True)
class Phase:
    """`rows` is a [1] device tensor with the number of real tokens when Lynx may remap, else None
    and `reason` says why not."""

    rows: torch.Tensor | None
    reason: str


def full_graphs_are_decode_only(cudagraph_mode: Any) -> bool:
    """True when FULL graphs of this configured mode only ever hold uniform-decode batches."""
    return (
        cudagraph_mode.separate_routine()
        and cudagraph_mode.decode_mode() == CUDAGraphMode.FULL
        and cudagraph_mode.mixed_mode() != CUDAGraphMode.FULL
    )


def describe_gating(cudagraph_mode: Any) -> tuple[str, bool]:
    """(what Lynx will do under this configured graph mode, whether it has decode steps to act on)."""
    if cudagraph_mode is None or cudagraph_mode == CUDAGraphMode.NONE:
        return "eager: remaps every uniform-decode step, prefill and mixed steps bypass", True
    if full_graphs_are_decode_only(cudagraph_mode):
        return (
            f"cudagraph_mode={cudagraph_mode.name}: remaps inside FULL decode graphs and eager "
            "decode steps; PIECEWISE/mixed/prefill steps bypass",
            True,
        )
    return (
        f"cudagraph_mode={cudagraph_mode.name}: its graphs may hold mixed batches, so Lynx bypasses "
        "every graphed step and only remaps decode steps that run eagerly (batches larger than the "
        "largest capture size). Use the default FULL_AND_PIECEWISE or FULL_DECODE_ONLY",
        False,
    )


def _batch_metadata(attn_metadata: Any) -> Any | None:
    """One per-layer metadata object that carries max_query_len and query_start_loc."""
    if isinstance(attn_metadata, list):  # dual-batch overlap: one dict per micro-batch
        from vllm.v1.worker.ubatching import dbo_current_ubatch_id

        attn_metadata = attn_metadata[dbo_current_ubatch_id()] if attn_metadata else None
    if not attn_metadata:
        return None
    for meta in attn_metadata.values():
        if isinstance(getattr(meta, "max_query_len", None), int) and isinstance(
            getattr(meta, "query_start_loc", None), torch.Tensor
        ):
            return meta
    return UNKNOWN_METADATA


def current_phase(cudagraph_mode: Any, num_speculative_tokens: int) -> Phase:
    """Decide for the forward pass in progress (see the module docstring). It runs on every MoE
    call of eager steps and captures, so vLLM is imported once at module level, not here."""
    if not forward_context.is_forward_context_available():
        return Phase(None, NO_CONTEXT)
    ctx = forward_context.get_forward_context()
    mode = ctx.cudagraph_runtime_mode
    if mode == CUDAGraphMode.PIECEWISE:
        return Phase(None, PIECEWISE)
    if mode == CUDAGraphMode.FULL and not full_graphs_are_decode_only(cudagraph_mode):
        return Phase(None, FULL_MIXED)
    meta = _batch_metadata(ctx.attn_metadata)
    if meta is None:
        return Phase(None, PROFILE)
    if meta is UNKNOWN_METADATA:
        return Phase(None, UNKNOWN_METADATA)
    if meta.max_query_len > 1 + num_speculative_tokens:
        return Phase(None, MIXED)
    return Phase(meta.query_start_loc[-1:], "uniform decode")
