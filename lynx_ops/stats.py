# SPDX-License-Identifier: Apache-2.0
"""Per-layer distinct-expert statistics, accumulated on the device with no host synchronisation.

Each `lynx::remap` call returns `touched` ([5] int32, over the valid rows: distinct experts before
and after, rows keeping their top-1 expert, valid rows, assignments moved).
`ExpertStats.record(layer, touched)` adds it, plus a call count, in place into a fixed-address
device buffer, so it is captured by CUDA graphs and keeps counting on every replay.
`snapshot()` copies the buffer to the host (one sync) when someone asks.
"""

from __future__ import annotations

import dataclasses

import torch

from lynx_ops.routing import TOUCHED_LEN


@dataclasses.dataclass(frozen=True)
class LayerStats:
    layer: int
    calls: int
    experts_before: int  # summed over calls
    experts_after: int
    rows_keeping_top1: int = 0
    rows: int = 0
    assignments_moved: int = 0  # experts rows used after the remap that they had not chosen

    @property
    def mean_before(self) -> float:
        return self.experts_before / self.calls if self.calls else 0.0

    @property
    def mean_after(self) -> float:
        return self.experts_after / self.calls if self.calls else 0.0

    @property
    def top1_kept_share(self) -> float:
        return self.rows_keeping_top1 / self.rows if self.rows else 1.0

    def moved_share(self, top_k: int) -> float:
        """Share of the (row, expert) assignments that the remap moved to another expert."""
        return self.assignments_moved / (self.rows * top_k) if self.rows and top_k else 0.0


class ExpertStats:
    """[num_layers, 1 + TOUCHED_LEN] int64 device buffer: calls, then the sums of `touched`."""

    def __init__(self, num_layers: int, device: torch.device | str) -> None:
        # Normal tensors even when made inside the forward (lazily, under vLLM's inference mode, as
        # with FP8 layers): an inference tensor could not be zeroed by reset() outside it.
        with torch.inference_mode(False):
            self.buffer = torch.zeros(num_layers, 1 + TOUCHED_LEN, dtype=torch.int64, device=device)
        # On the CPU a decode step pays record() once per MoE layer in Python (no graphs): a NumPy
        # view of the same memory adds without torch's per-call dispatch of two in-place adds.
        self._host = self.buffer.numpy() if self.buffer.device.type == "cpu" else None

    def record(self, layer: int, touched: torch.Tensor) -> None:
        if (self._host is not None and touched.device.type == "cpu"
                and not torch.compiler.is_compiling()):  # fmt: skip
            row = self._host[layer]
            row[0] += 1
            row[1:] += touched.numpy()
            return
        row = self.buffer[layer]
        row[:1].add_(1)
        row[1:].add_(touched)  # int32 added into int64 in the one kernel: no separate cast launch

    def reset(self) -> None:
        self.buffer.zero_()

    def snapshot(self) -> list[LayerStats]:
        host = self.buffer.cpu().tolist()
        return [LayerStats(i, *row) for i, row in enumerate(host)]
