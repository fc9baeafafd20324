# SPDX-License-Identifier: Apache-2.0
"""Device time of a callable as a decode step pays it: captured `inner` times in one CUDA graph,
the graph replayed `repeats` times, the median per call in microseconds (no Python launch cost)."""

from __future__ import annotations

import statistics

import torch


def graph_time_us(fn, repeats: int, inner: int = 20) -> float:
    fn()  # compile and warm up outside the capture
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for _ in range(inner):
            fn()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        g.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1000.0 / inner)
    return statistics.median(times)
