# SPDX-License-Identifier: Apache-2.0
"""Run by tests/test_capture_safe.py in a fresh process (a broken capture can leave CUDA state
behind): the main thread captures a CUDA graph holding `lynx::remap` and the stats update, in
vLLM's capture mode (torch.cuda.graph's default, "global"), while a side thread reads the
counters to the host, as the plugin's stats thread does. Prints one JSON line:
{"reads_during_capture", "thread_error", "capture_error", "calls_after_replays"}.

    python -m tests.capture_read_probe side|plain   (side: through SideReader; plain: .cpu())
"""

from __future__ import annotations

import json
import sys
import threading

import torch

import lynx_ops  # noqa: F401  (registers torch.ops.lynx.remap)
from lynx_ops.capture_safe import SideReader
from lynx_ops.stats import ExpertStats
from tests.helpers import Shape, make_batch

REPLAYS, READS = 3, 5


def main(how: str) -> None:
    shape = Shape(128, 8, alpha=3.0)
    x, w, ids, _ = (a.cuda() if a is not None else None for a in make_batch(shape, 64, seed=0))
    args = (x, w, ids, torch.tensor([64], dtype=torch.int32, device="cuda"), None, shape.alpha,
            shape.beta, 0, 0, 1.0, 0)  # fmt: skip
    stats = ExpertStats(num_layers=1, device="cuda")
    torch.ops.lynx.remap(*args)  # compile before capture
    torch.cuda.synchronize()

    capturing, stop = threading.Event(), threading.Event()
    reads = threading.Semaphore(0)
    result = {"reads_during_capture": 0, "thread_error": None, "capture_error": None}

    def reader() -> None:
        side = SideReader()
        capturing.wait()
        try:
            while not stop.is_set():
                if how == "side":
                    with side.reading(stats.buffer.device):
                        stats.snapshot()
                else:
                    stats.snapshot()
                if capturing.is_set():
                    result["reads_during_capture"] += 1
                    reads.release()
        except Exception as e:  # reported, not raised: the main thread decides
            result["thread_error"] = f"{type(e).__name__}: {e}"
            reads.release()

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    graph = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(graph):
            out = torch.ops.lynx.remap(*args)
            stats.record(0, out[2])
            capturing.set()
            # Hold the capture open until the side thread has read READS times (or failed).
            for _ in range(READS):
                if not reads.acquire(timeout=20) or result["thread_error"]:
                    break
            capturing.clear()
    except Exception as e:
        result["capture_error"] = f"{type(e).__name__}: {e}"
    stop.set()
    capturing.set()  # release a reader still waiting
    thread.join(timeout=20)
    if result["capture_error"] is None:
        stats.reset()
        for _ in range(REPLAYS):
            graph.replay()
        torch.cuda.synchronize()
        result["calls_after_replays"] = stats.snapshot()[0].calls
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
