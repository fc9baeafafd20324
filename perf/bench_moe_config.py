# SPDX-License-Identifier: Apache-2.0
"""Question: does a tuned fused-MoE launch config change stock or Lynx decode, and does Lynx need
configs of its own for its reduced expert counts?

vLLM picks the Triton fused-MoE kernel's tiles (BLOCK_SIZE_M/N/K, GROUP_SIZE_M, warps, stages) from
a JSON file keyed by (E, N, GPU, dtype) and the token count M, or from `get_default_config` when no
file exists (it warns "Using default MoE config" for the Qwen3-30B-A3B, Mixtral-8x7B bf16,
Qwen1.5-MoE and DeepSeek-V2-Lite shapes on an H100). The config depends on M, not on how the
tokens are spread: with Lynx the same M tokens land on far fewer experts, so more tokens share an
expert and a taller M tile may pay off. This times one MoE layer (`fused_experts`, both GEMMs)
under each config of a small grid, for the stock routing and the Lynx routing of the same logits,
inside CUDA graphs (median over replays), and reports per batch and routing: the default config's
time, the best grid config's time, and the Lynx/stock ratio under each.

Router logits: Gaussian, std 2 logits, plus a per-expert skew (std 1) (the benchmark's re-drawn
gates, spread 2 skew 1). Weights: random bf16 at the model's shapes.

    python perf/bench_moe_config.py --shape qwen3-moe --out perf/results/moe_config_h100.csv
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import lynx_ops  # noqa: E402,F401  (registers torch.ops.lynx.remap)
from lynx_ops.registry import router_shape, select_policy  # noqa: E402
from lynx_ops.routing import WeightRule  # noqa: E402
from perf.provenance import provenance, write_csv  # noqa: E402
from perf.timing import graph_time_us  # noqa: E402

# name -> (HF config for the policy, hidden size H, expert intermediate size N)
SHAPES = {
    "qwen3-moe": ({"model_type": "qwen3_moe", "num_experts": 128, "num_experts_per_tok": 8},
                  2048, 768),
    "qwen2-moe": ({"model_type": "qwen2_moe", "num_experts": 60, "num_experts_per_tok": 4},
                  2048, 1408),
    "mixtral": ({"model_type": "mixtral", "num_local_experts": 8, "num_experts_per_tok": 2},
                4096, 14336),
}  # fmt: skip


def grid() -> list[dict]:
    out = []
    for bm, bn, bk, warps, stages in itertools.product(
        (16, 32, 64), (32, 64, 128), (64, 128, 256), (4,), (3, 4)
    ):
        # shared memory: the widest tiles do not fit at 4 stages; and (a compile costs seconds)
        # tall-K x wide-N tiles, slow for decode's few tokens per expert, are left out
        if bn * bk > 64 * 128 or (bn == 32 and bk == 64):
            continue
        out.append({"BLOCK_SIZE_M": bm, "BLOCK_SIZE_N": bn, "BLOCK_SIZE_K": bk,
                    "GROUP_SIZE_M": 1, "SPLIT_K": 1, "num_warps": warps, "num_stages": stages})  # fmt: skip
    return out


def routing(config: dict, T: int, seed: int):
    """Stock top-k (softmax, renormalised as the family does) and the Lynx remap of the same logits."""
    sel = select_policy(config).policy
    E, k = router_shape(config)
    gen = torch.Generator().manual_seed(seed)
    logits = (torch.randn(T, E, generator=gen) * 2 + torch.randn(E, generator=gen)).cuda()
    probs = logits.softmax(-1)
    w, ids = probs.topk(k, dim=-1)
    if sel.weight_rule == WeightRule.RENORMALIZE:
        w = w / w.sum(-1, keepdim=True)
    ids = ids.to(torch.int32)
    num_valid = torch.tensor([T], dtype=torch.int32, device="cuda")
    new_w, new_ids, touched = torch.ops.lynx.remap(logits, w, ids, num_valid, None, *sel.op_args())
    return {
        "stock": (w, ids, int(ids.unique().numel())),
        "lynx": (new_w, new_ids, int(new_ids.unique().numel())),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shape", default="qwen3-moe", choices=sorted(SHAPES))
    ap.add_argument("--batches", type=int, nargs="+", default=[16, 32, 64])
    ap.add_argument("--replays", type=int, default=20)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench_moe_config needs a GPU")
    from vllm.model_executor.layers.fused_moe import override_config
    from vllm.model_executor.layers.fused_moe.fused_moe import fused_experts

    config, H, N = SHAPES[args.shape]
    E, _ = router_shape(config)
    torch.manual_seed(0)
    w1 = torch.randn(E, 2 * N, H, device="cuda", dtype=torch.bfloat16) * 0.02
    w2 = torch.randn(E, H, N, device="cuda", dtype=torch.bfloat16) * 0.02
    prov = provenance()
    rows = []
    configs = [None, *grid()]
    for T in args.batches:
        x = torch.randn(T, H, device="cuda", dtype=torch.bfloat16)
        for name, (w, ids, touched) in routing(config, T, seed=T).items():
            for cfg in configs:

                def step(cfg=cfg, w=w, ids=ids, x=x):
                    with override_config(cfg):
                        return fused_experts(x, w1, w2, w, ids)

                if cfg is None:  # vLLM's own choice: an error here is the script's, so raise it
                    us, err = graph_time_us(step, args.replays, inner=10), ""
                    print(f"[moe-config] B={T} {name}: vLLM default {us:.1f} us", flush=True)
                else:
                    try:
                        us, err = graph_time_us(step, args.replays, inner=10), ""
                    except Exception as e:  # a tile that does not fit this GPU: recorded, skipped
                        us, err = float("nan"), type(e).__name__
                rows.append({**prov, "shape": args.shape, "E": E, "N": N, "H": H, "batch": T,
                             "routing": name, "experts_touched": touched,
                             "config": "vllm-default" if cfg is None else
                             "m{BLOCK_SIZE_M}n{BLOCK_SIZE_N}k{BLOCK_SIZE_K}w{num_warps}s{num_stages}".format(**cfg),
                             "time_us": round(us, 2), "error": err})  # fmt: skip
            print(f"[moe-config] B={T} {name}: {len(configs)} configs timed", flush=True)
            write_csv(args.out, rows)  # as it goes: a cut-short run keeps what it measured
    print(f"\n{args.shape} (E={E}, N={N}, H={H}) on {prov.get('gpu', '?')}; one MoE layer, "
          "router spread 2 skew 1 (synthetic logits)")  # fmt: skip
    print(
        f"{'B':>4} {'routing':8} {'experts':>7} {'default us':>10} {'best us':>8} {'gain':>6}  best config"
    )
    best = {}
    for T in args.batches:
        for name in ("stock", "lynx"):
            sel = [r for r in rows if r["batch"] == T and r["routing"] == name]
            default = next(r for r in sel if r["config"] == "vllm-default")
            ok = [r for r in sel if r["time_us"] == r["time_us"]]
            top = min(ok, key=lambda r: r["time_us"])
            best[T, name] = (default["time_us"], top["time_us"])
            print(f"{T:4d} {name:8} {default['experts_touched']:7d} {default['time_us']:10.1f} "
                  f"{top['time_us']:8.1f} {default['time_us'] / top['time_us']:5.2f}x  {top['config']}")  # fmt: skip
    print(f"\n{'B':>4} {'stock/lynx, default':>20} {'stock/lynx, each best':>22}")
    for T in args.batches:
        (sd, sb), (ld, lb) = best[T, "stock"], best[T, "lynx"]
        print(f"{T:4d} {sd / ld:19.2f}x {sb / lb:21.2f}x")


if __name__ == "__main__":
    main()
