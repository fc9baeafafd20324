# SPDX-License-Identifier: Apache-2.0
"""Question: how long does one `lynx::remap` call take on this GPU, per family shape and batch size?

Times the Triton op and, beside it, the plain-torch reference on the same GPU (the baseline a
pure-PyTorch implementation would cost). Each call is timed inside a CUDA graph of 20 calls, replayed
`--repeats` times, so the number is the device time of the kernel without Python launch overhead
(which is what a decode step under vLLM's CUDA graphs pays); the median over repeats is reported.
Also reports eager per-call wall time (Python dispatch + launch), the cost outside CUDA graphs.

Router logits: Gaussian, std 2 logits, plus a per-expert skew (std 1): a realistic trained-router
spread, not dummy weights. The latency does not depend much on the values.

    python perf/bench_kernel.py --out perf/results/kernel_latency_h100.csv
    python perf/bench_kernel.py --sweep --out perf/results/kernel_sweep_h100.csv

`--policy budget` / `--policy keep_k0` time `lynx::remap_budget` (K = E/4, count score) and
`lynx::remap_keep` (k0 = k/2, or `--k0`) instead, with their references beside them. Beside the
op, `with_counters` times it with the per-layer counter update the plugin adds (ExpertStats.record):
what one covered MoE layer costs a captured decode step. `--shapes` picks shapes by prefix.

`--sweep` times each launch shape (fused in one program; split in three launches at several block
sizes) per shape and batch, which is how the thresholds in lynx_ops/kernels/configs.py were chosen,
and each again with the selection variants of `--variants` (LaunchConfig.variant).
`--policy` picks the policy's launchers there too, and every launch's output is compared with the
reference (column `differs_from_reference`; a differing launch is never `best`). `--fused-warps` and
`--fused-max-scores` widen the one-program launches tried (default 2, 4, 8 warps up to 4096 scores).
`--baseline-kernels FILE` adds another revision's kernels at the launch the op picks (`auto_baseline`
beside `auto`), so a change to the kernels is timed against the old ones on one machine in one run.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import lynx_ops  # noqa: E402
from lynx_ops.reference import budget_ref, keep_ref, remap_ref  # noqa: E402
from lynx_ops.stats import ExpertStats  # noqa: E402
from perf.baseline import load_file_module  # noqa: E402
from perf.provenance import provenance, write_csv  # noqa: E402
from perf.timing import graph_time_us as _graph_time_us  # noqa: E402
from tests.helpers import FAMILY_SHAPES, Shape, make_batch, op_args  # noqa: E402

# The family shapes the tests check (tests/helpers.FAMILY_SHAPES), without the odd ones that only
# exercise edge cases: one list of family facts for tests and benchmarks.
SHAPES = {p.id: p.values[0] for p in FAMILY_SHAPES if not p.id.startswith("odd-")}
BATCHES = [1, 8, 16, 32, 64, 128, 256, 512]


def _eager_time_us(fn, repeats: int) -> float:
    import time

    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) * 1e6)
    return statistics.median(times)


def _baseline_launcher(path: str):
    """`remap_triton` of another revision's lynx_ops/kernels/remap.py (`git show
    REV:lynx_ops/kernels/remap.py > FILE`), which imports today's launch configs: so the sweep's
    `auto_baseline` column is the old kernels at today's launch choice, timed in the same run."""
    return load_file_module(path, "lynx_remap_baseline").remap_triton


def _launcher(policy: str):
    """The policy's Triton launcher, which takes the op's arguments plus a launch `config`."""
    from lynx_ops.kernels.policies import budget_triton, keep_triton
    from lynx_ops.kernels.remap import remap_triton

    return {"bins": remap_triton, "budget": budget_triton, "keep_k0": keep_triton}[policy]


def _differs(got, want) -> bool:
    """Whether a launch's output differs from the reference's as the kernel tests judge it (ids and
    experts touched exactly, weights to tolerance): the sweep records it rather than stopping."""
    got = [t.cpu() for t in got]
    want = [t.cpu() for t in want]
    if not (torch.equal(got[1], want[1]) and torch.equal(got[2], want[2])):
        return True
    try:
        torch.testing.assert_close(got[0], want[0])
    except AssertionError:
        return True
    return False


def _sweep(args, prov) -> list[dict]:
    import triton

    from lynx_ops.kernels.configs import fused_config, launch_config, split_config

    baseline = _baseline_launcher(args.baseline_kernels) if args.baseline_kernels else None
    if baseline is not None and args.policy != "bins":
        raise SystemExit("--baseline-kernels holds kernels/remap.py, the bins policy's kernels")
    run_policy = _launcher(args.policy)
    rows = []
    for name, shape in SHAPES.items():
        if args.shapes and not any(name.startswith(s) for s in args.shapes):
            continue
        block_e = triton.next_power_of_2(shape.E)
        for T in args.batches:
            x, w, ids, bias = (a.cuda() if a is not None else None
                               for a in make_batch(shape, T, seed=T))  # fmt: skip
            _, ref, a = _policy_call(args.policy, shape, op_args(shape, x, w, ids, bias, T),
                                     args.k0)  # fmt: skip
            want = ref(*a)
            # 2048-score split tiles and fused programs over 4096 scores at up to 8 warps lost
            # everywhere on the first H100 sweep (perf/results/kernel_sweep_h100.csv); "auto" is
            # what the op picks.
            configs = {f"split{tile}": split_config(shape.E, tile) for tile in (256, 512, 1024)}
            if triton.next_power_of_2(T) * block_e <= args.fused_max_scores:
                configs["fused"] = fused = fused_config(T, shape.E)
                for warps in args.fused_warps:  # one program: does more parallelism inside it pay?
                    if warps != fused.num_warps:
                        configs[f"fused_w{warps}"] = dataclasses.replace(fused, num_warps=warps)
            configs["auto"] = launch_config(T, shape.E, shape.k)
            launchers = {label: run_policy for label in configs}
            if baseline is not None:  # another revision's kernels at today's launch choice
                configs["auto_baseline"], launchers["auto_baseline"] = configs["auto"], baseline
                got = [t.cpu() for t in run_policy(*a, config=configs["auto"])]
                base = [t.cpu() for t in baseline(*a, config=configs["auto"])]
                assert all(torch.equal(g, h) for g, h in zip(got, base, strict=True)), (
                    f"the baseline kernels disagree with today's on {name} T={T}"
                )
            # the selection variant (LaunchConfig.variant: 1 one-key picks; only the bins vote
            # has one) on every launch shape above, the default's beside them
            for label, cfg in list(configs.items()):
                if label not in ("auto", "auto_baseline") and args.policy == "bins":
                    for variant in args.variants:
                        configs[f"{label}_v{variant}"] = dataclasses.replace(cfg, variant=variant)
                        launchers[f"{label}_v{variant}"] = run_policy
            times, wrong = {}, []
            for label, cfg in configs.items():
                run = launchers[label]
                if _differs(run(*a, config=cfg), want):
                    wrong.append(label)  # timed all the same; never "best"
                times[label] = _graph_time_us(
                    lambda a=a, cfg=cfg, run=run: run(*a, config=cfg), args.repeats
                )  # fmt: skip
            exact = [lbl for lbl in times if not lbl.startswith("auto") and lbl not in wrong]
            best = min(exact, key=times.get) if exact else ""
            rows.append(
                {
                    "shape": name,
                    "policy": args.policy,
                    "E": shape.E,
                    "k": shape.k,
                    "T": T,
                    "k0": a[5].item() if args.policy == "keep_k0" else "",
                    "best": best,
                    "differs_from_reference": " ".join(wrong),
                    **{f"{lbl}_us": round(v, 2) for lbl, v in times.items()},
                    **prov,
                }
            )
            print(f"{name:32s} T={T:4d} " + " ".join(f"{lbl}={v:.2f}" for lbl, v in times.items())
                  + f"  best={best}" + (f"  DIFFERS: {wrong}" if wrong else ""), flush=True)  # fmt: skip
        write_csv(args.out, rows)  # after every shape: a run stopped by a time limit keeps its rows
    return rows


def _policy_call(policy: str, shape: Shape, a: tuple, k0: int | None = None):
    """(op, reference, arguments) for one policy on remap's arguments `a`; keep_k0 keeps `k0`
    (default k/2; k0 >= k is the identity setting the TPOT controller's top rung runs)."""
    if policy == "bins":
        return torch.ops.lynx.remap, remap_ref, a
    head, tail = a[:5], a[7:]  # tensors ... bias | scoring, rule, scale, groups
    if policy == "budget":
        k_t = torch.full((1,), max(1, shape.E // 4), dtype=torch.int32, device=a[0].device)
        return torch.ops.lynx.remap_budget, budget_ref, (*head, k_t, 1.0, 0, *a[5:7], *tail)
    # clamped to [1, k] as the op clamps it, so the k0 column says what ran
    keep = max(1, shape.k // 2) if k0 is None else max(1, min(k0, shape.k))
    k0_t = torch.full((1,), keep, dtype=torch.int32, device=a[0].device)
    return torch.ops.lynx.remap_keep, keep_ref, (*head, k0_t, *tail)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=50)
    ap.add_argument("--out", default="perf/results/kernel_latency.csv")
    ap.add_argument("--batches", type=int, nargs="*", default=BATCHES)
    ap.add_argument("--sweep", action="store_true", help="time every launch shape, see above")
    ap.add_argument("--variants", type=int, nargs="*", default=[1],
                    help="selection variants the sweep times beside the default (configs.py)")  # fmt: skip
    ap.add_argument("--shapes", nargs="*", default=[], help="only shapes whose name starts so")
    ap.add_argument("--policy", choices=["bins", "budget", "keep_k0"], default="bins")
    ap.add_argument("--k0", type=int, help="keep_k0: experts each row keeps (default k/2; a value "
                    ">= k times the identity setting at each shape's k)")  # fmt: skip
    ap.add_argument("--fused-warps", type=int, nargs="*", default=[2, 4, 8],
                    help="with --sweep: warp counts the one-program launch is timed at beside "
                    "the default's")  # fmt: skip
    ap.add_argument("--fused-max-scores", type=int, default=4096,
                    help="with --sweep: the largest padded batch (rows x experts, both rounded "
                    "up to powers of two) the one-program launch is timed at")  # fmt: skip
    ap.add_argument("--baseline-kernels", help="with --sweep: another revision's kernels/remap.py, "
                    "timed at today's launch choice beside today's (column auto_baseline)")  # fmt: skip
    args = ap.parse_args()
    assert torch.cuda.is_available(), "this benchmark needs a GPU"
    if args.k0 is not None and args.policy != "keep_k0":
        ap.error("--k0 is a keep_k0 setting: add --policy keep_k0")
    prov = provenance()
    if args.sweep:
        write_csv(args.out, _sweep(args, prov))
        print(f"wrote {args.out}")
        return
    rows = []
    shapes = {n: s for n, s in SHAPES.items()
              if not args.shapes or any(n.startswith(p) for p in args.shapes)}  # fmt: skip
    for name, shape in shapes.items():
        for T in args.batches:
            x, w, ids, bias = (a.cuda() if a is not None else None
                               for a in make_batch(shape, T, seed=T))  # fmt: skip
            op, ref, a = _policy_call(args.policy, shape, op_args(shape, x, w, ids, bias, T),
                                      args.k0)  # fmt: skip
            op_us = _graph_time_us(lambda a=a, op=op: op(*a), args.repeats)
            # What a covered MoE layer adds to a captured decode step: the op and the layer's
            # counter update (integration/layers.route -> ExpertStats.record), in one graph.
            stats = ExpertStats(1, x.device)
            layer_us = _graph_time_us(
                lambda a=a, op=op, stats=stats: stats.record(0, op(*a)[2]), args.repeats
            )  # fmt: skip
            ref_us = _graph_time_us(lambda a=a, ref=ref: ref(*a), max(5, args.repeats // 5))
            eager_us = _eager_time_us(lambda a=a, op=op: op(*a), args.repeats)
            before, after = op(*a)[2].tolist()[:2]
            rows.append({
                "shape": name, "policy": args.policy, "E": shape.E, "k": shape.k, "T": T,
                "k0": a[5].item() if args.policy == "keep_k0" else "",
                "triton_graph_us_median": round(op_us, 2),
                "with_counters_graph_us_median": round(layer_us, 2),
                "reference_graph_us_median": round(ref_us, 2),
                "triton_eager_call_us_median": round(eager_us, 2),
                "experts_before": before, "experts_after": after,
                "router": "gaussian std 2 + per-expert skew std 1 (synthetic)",
                **prov,
            })  # fmt: skip
            print(f"{name:32s} T={T:4d} triton {op_us:7.2f} us  with counters {layer_us:7.2f} us  "
                  f"reference {ref_us:8.2f} us  "
                  f"eager call {eager_us:7.2f} us  experts {before}->{after}", flush=True)  # fmt: skip
    write_csv(args.out, rows)
    print(f"\nwrote {args.out}")
    print(f"\n{'shape':32s} " + " ".join(f"T={t:<6d}" for t in args.batches) + "  (triton us)")
    for name in shapes:
        vals = [r["triton_graph_us_median"] for r in rows if r["shape"] == name]
        print(f"{name:32s} " + " ".join(f"{v:<8.2f}" for v in vals))
    print(f"lynx_ops {lynx_ops.__version__} on {prov['gpu']}")


if __name__ == "__main__":
    main()
