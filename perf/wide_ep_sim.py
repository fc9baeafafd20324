# SPDX-License-Identifier: Apache-2.0
"""Wide expert parallelism, simulated: how many experts each EP rank reads per MoE layer when every
DP rank remaps its own tokens (per-rank Lynx, what the plugin does today) against one remap over
all ranks' tokens (a global histogram: docs/WIDE_EP.md). No GPU; the remap is lynx_ops' reference.

    python perf/wide_ep_sim.py --out perf/results/wide_ep_sim.csv

Model: R DP ranks with `tokens` decode tokens each, experts sharded evenly over R EP ranks (E/R
per rank; the layout of vLLM's DP-attention + EP-MoE deployments). Router logits come from the
calibrated router presets' generator (router_stats/*.json): a token's logit for expert e is
spread * exp(skew * b_e) * z, b fixed per layer. An EP rank reads the experts of its shard that
any token of any DP rank selected. The global remap is exactly the reference run on the union of
all ranks' tokens (the histogram is a sum over rows, the kept set a union over rows).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lynx_ops.reference import remap_ref  # noqa: E402
from lynx_ops.registry import select_policy  # noqa: E402

STATS = Path(__file__).resolve().parents[1] / "lynx_ops" / "bench" / "router_stats"
SHAPES = {  # name: (E, k, preset, HF config for the family's policy)
    "qwen3-30b-a3b": (128, 8, "calibrated",
                      {"model_type": "qwen3_moe", "num_experts": 128, "num_experts_per_tok": 8}),
    # DeepSeek-V3's size (256 experts, top-8) with softmax scoring and no group limit: the shape of
    # wide-EP deployments, routing simplified (the op's grouped sigmoid path is tested elsewhere).
    "deepseek-v3-size": (256, 8, "calibrated-deepseek",
                         {"model_type": "qwen3_moe", "num_experts": 256, "num_experts_per_tok": 8}),
}  # fmt: skip


def routing(E: int, k: int, tokens: int, spread: float, skew: float, gen: torch.Generator):
    scale = torch.exp(skew * torch.randn(E, generator=gen))
    logits = spread * scale * torch.randn(tokens, E, generator=gen)
    w, ids = torch.softmax(logits, -1).topk(k, dim=-1)
    return logits, w / w.sum(-1, keepdim=True), ids.to(torch.int32)


def remap(policy, logits, w, ids):
    n = torch.tensor([logits.shape[0]], dtype=torch.int32)
    return remap_ref(logits, w, ids, n, None, *policy.op_args())[1]


def per_ep_rank(ids: torch.Tensor, E: int, ranks: int) -> list[int]:
    """Distinct experts each EP rank reads (shard r holds experts [r*E/R, (r+1)*E/R))."""
    used = torch.zeros(E, dtype=torch.bool)
    used[ids.flatten().long()] = True
    return used.view(ranks, E // ranks).sum(1).tolist()


def simulate(shape: str, ranks: int, tokens: int, layers: int, seed: int) -> dict:
    E, k, preset, config = SHAPES[shape]
    record = json.loads((STATS / f"{preset}.json").read_text())
    policy = select_policy(config, config_file=None).policy
    gen = torch.Generator().manual_seed(seed)
    out = {"stock": [], "per_rank": [], "global": []}
    for _ in range(layers):
        logits, w, ids = routing(E, k, ranks * tokens, record["spread"], record["skew"], gen)
        local = torch.cat([remap(policy, logits[r * tokens:(r + 1) * tokens],
                                 w[r * tokens:(r + 1) * tokens], ids[r * tokens:(r + 1) * tokens])
                           for r in range(ranks)])  # fmt: skip
        for name, chosen in (("stock", ids), ("per_rank", local),
                             ("global", remap(policy, logits, w, ids))):  # fmt: skip
            out[name].append(per_ep_rank(chosen, E, ranks))
    uniform = E / ranks * (1 - math.pow(1 - k / E, ranks * tokens))
    row = {"shape": shape, "router": preset, "dp_ep_ranks": ranks, "tokens_per_dp_rank": tokens,
           "experts_per_ep_rank": E // ranks, "uniform_expected": round(uniform, 2),
           "layers": layers, "policy": policy.describe()}  # fmt: skip
    for name, per_layer in out.items():
        row[f"{name}_mean"] = round(statistics.mean(statistics.mean(v) for v in per_layer), 2)
        # the slowest EP rank sets the step's pace
        row[f"{name}_max"] = round(statistics.mean(max(v) for v in per_layer), 2)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ranks", type=int, nargs="+", default=[8, 16, 32, 64])
    ap.add_argument("--tokens", type=int, nargs="+", default=[4, 16, 64])
    ap.add_argument("--layers", type=int, default=8, help="independent layers (routers) per point")
    ap.add_argument("--out", default="perf/results/wide_ep_sim.csv")
    args = ap.parse_args()
    rows = []
    for shape in SHAPES:
        for ranks in args.ranks:
            for tokens in args.tokens:
                row = simulate(shape, ranks, tokens, args.layers, seed=ranks * 1000 + tokens)
                rows.append(row)
                print(f"{shape} R={ranks} b={tokens}: experts per EP rank (of {row['experts_per_ep_rank']}) "
                      f"stock {row['stock_mean']} / per-rank Lynx {row['per_rank_mean']} / global "
                      f"{row['global_mean']}; max rank {row['stock_max']} / {row['per_rank_max']} / "
                      f"{row['global_max']}", flush=True)  # fmt: skip
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(f"results: {args.out}")


if __name__ == "__main__":
    main()
