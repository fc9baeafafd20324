# SPDX-License-Identifier: Apache-2.0
"""Export a trained model's router statistics for `lynx-bench --router-stats` (dummy-weight realism).

    python scripts/export_router_stats.py [--model DIR] [--out lynx_ops/bench/router_stats/embedded.json]

Runs the checkpoint (HF transformers, CPU is enough) on held-out corpus files, captures every MoE
gate's logits and fits the two numbers `router_realism.draw_routers` draws gates from (the `lynx_dummy` load format):

* per expert e, sigma_e = std over tokens of logit[e]; a re-drawn gate has sigma_e = spread *
  exp(skew * b_e) with b_e ~ N(0, 1), so spread = exp(mean log sigma_e), skew = std log sigma_e;
* for the record, what the fit leaves out: the per-expert mean logits (a trained router's fixed
  preferences; the re-drawn gates have none), and the distinct experts a batch of B held-out tokens
  touches (mean over batches), the quantity Lynx works on: consecutive tokens (one document) and
  tokens drawn at random from all windows (as independent requests are), beside E(1-(1-k/E)^B),
  the union of independent uniform choices;
* the router's profile: the median over tokens of the sorted top-k softmax probabilities (over
  all E, before top-k renormalisation), the statistic published for real routers (Qwen3-30B-A3B:
  .077 .058 .048 .040 .034 .030 .027 .024).

The text is the model's own held-out corpus (the `corpus.name` its training.json records), read
from `--corpus-archive` where this machine lacks that corpus's packages.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lynx_ops.embedded import MODEL_DIR, corpus  # noqa: E402
from lynx_ops.registry import router_shape  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=str(MODEL_DIR))
    ap.add_argument("--out", default="lynx_ops/bench/router_stats/embedded.json")
    ap.add_argument("--tokens", type=int, default=8192)
    ap.add_argument("--corpus-archive", help="read the held-out split from this corpus archive")
    args = ap.parse_args()
    source = corpus.of_model(args.model)

    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).eval()
    num_experts, top_k = router_shape(model.config.to_dict())
    captured: dict[int, list[torch.Tensor]] = {}
    hooks = []
    for i, layer in enumerate(model.model.layers):
        gate = getattr(layer.mlp, "gate", None)
        if gate is None or not hasattr(gate, "weight"):
            continue

        def grab(module, inputs, i=i):
            h = inputs[0].reshape(-1, inputs[0].shape[-1])
            captured.setdefault(i, []).append(h @ module.weight.float().t())

        hooks.append(gate.register_forward_pre_hook(grab))

    ids: list[int] = []
    for _, text in corpus.documents("heldout", source, args.corpus_archive):
        ids.extend(tok(text)["input_ids"])
        if len(ids) >= args.tokens:
            break
    windows = torch.tensor(ids[: args.tokens - args.tokens % 256]).view(-1, 256)
    with torch.no_grad():
        for chunk in windows.split(8):
            model(input_ids=chunk)
    for h in hooks:
        h.remove()

    layers = []
    for i, parts in sorted(captured.items()):
        logits = torch.cat(parts)  # [N, E]
        log_sigma = logits.std(dim=0).log()
        probs, topk = logits.softmax(dim=1).topk(top_k, dim=1)
        shuffled = topk[torch.randperm(len(topk), generator=torch.Generator().manual_seed(0))]
        union, union_random, independent = {}, {}, {}
        for batch in (1, 8, 16, 32, 64):
            union[batch] = _mean_union(topk, batch, top_k)
            union_random[batch] = _mean_union(shuffled, batch, top_k)
            independent[batch] = round(num_experts * (1 - (1 - top_k / num_experts) ** batch), 2)
        layers.append({
            "layer": i, "tokens": len(logits),
            "spread": round(math.exp(log_sigma.mean().item()), 4),
            "skew": round(log_sigma.std().item(), 4),
            "expert_mean_logit_std": round(logits.mean(dim=0).std().item(), 4),
            "distinct_experts_per_batch": union,
            "distinct_experts_random_tokens": union_random,
            "distinct_experts_independent_uniform": independent,
            "median_sorted_topk_probs": [round(v, 4) for v in probs.median(dim=0).values.tolist()],
        })  # fmt: skip
    record = {
        "model": Path(args.model).name if Path(args.model) != MODEL_DIR else "embedded",
        "num_experts": num_experts, "top_k": top_k,
        "spread": round(sum(r["spread"] for r in layers) / len(layers), 4),
        "skew": round(sum(r["skew"] for r in layers) / len(layers), 4),
        "layers": layers,
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "text": f"held-out documents of the {source!r} corpus (lynx_ops/embedded/corpus.py)"
        + (f" from {args.corpus_archive}" if args.corpus_archive else
           f" of Python {platform.python_version()}"),
        "median_sorted_topk_probs": [round(sum(r["median_sorted_topk_probs"][j] for r in layers)
                                           / len(layers), 4) for j in range(top_k)],
    }  # fmt: skip
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=1) + "\n")
    print(f"spread {record['spread']}, skew {record['skew']} over {len(layers)} layers -> {out}")
    for r in layers:
        print(f"layer {r['layer']}: spread {r['spread']} skew {r['skew']} "
              f"expert-mean std {r['expert_mean_logit_std']} distinct {r['distinct_experts_per_batch']}"
              f" random-token {r['distinct_experts_random_tokens']} "
              f"top-k probs {r['median_sorted_topk_probs']}")  # fmt: skip


def _mean_union(topk: torch.Tensor, batch: int, top_k: int, groups_max: int = 256) -> float:
    """Mean distinct experts over up to groups_max batches of `batch` consecutive rows."""
    n = (len(topk) // batch) * batch
    groups = topk[:n].reshape(-1, batch * top_k)[:groups_max]
    return round(sum(len(set(g.tolist())) for g in groups) / len(groups), 2)


if __name__ == "__main__":
    main()
