# SPDX-License-Identifier: Apache-2.0
"""The README's main job.

    python -m lynx_ops.demo                  # stock vs Lynx in vLLM on the embedded model
    python -m lynx_ops.demo --model DIR      # ... on any local checkpoint
    python -m lynx_ops.demo --op [--batch 32] [--family qwen3_moe]   # the op alone

Until the embedded model is trained, the default is the op on a built-in example batch:

The router logits are synthetic: Gaussian (std 2 logits) plus a per-expert skew (std 1), i.e. a
trained-router-like spread where tokens share favourites. They are not from a trained model, so the
expert reduction shown illustrates the mechanism; it is not a measured property of any model.
On a machine without a GPU the Triton kernel runs in Triton's interpreter and is checked against
the plain-torch reference.
"""

from __future__ import annotations

import argparse
import os
import sys
import time


def main(argv: list[str] | None = None) -> int:
    """The main job: stock vs Lynx in vLLM on the embedded model (or --model) when there is one,
    else the op on the built-in example batch (--op forces that)."""
    ap = argparse.ArgumentParser(description="Lynx: stock vs Lynx on a model, or the op demo")
    ap.add_argument("--model", help="compare stock vLLM and Lynx on this local checkpoint")
    ap.add_argument("--op", action="store_true", help="only the op on the example batch")
    known, rest = ap.parse_known_args(argv)
    from lynx_ops import embedded

    model = known.model or (str(embedded.MODEL_DIR) if embedded.available() else None)
    if model and not known.op:
        from lynx_ops import compare

        return compare.main(["--model", model, *rest])
    if not known.op:
        print("[lynx demo] the embedded model is not trained yet (scripts/train_embedded_model.py); "
              "showing the op on the built-in example batch. Give --model DIR to compare stock "
              "vLLM and Lynx on a checkpoint.")  # fmt: skip
    return op_demo(rest)


def op_demo(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Lynx remap on a built-in example batch")
    ap.add_argument("--batch", type=int, default=32, help="decode batch size (rows)")
    ap.add_argument("--family", default="qwen3_moe",
                    choices=["qwen3_moe", "qwen2_moe", "mixtral", "deepseek_v3", "gpt_oss"])  # fmt: skip
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")  # before the kernel module is imported
    import lynx_ops
    from lynx_ops.registry import router_shape, select_policy

    configs = {
        "qwen3_moe": {"model_type": "qwen3_moe", "num_experts": 128, "num_experts_per_tok": 8},
        "qwen2_moe": {"model_type": "qwen2_moe", "num_experts": 64, "num_experts_per_tok": 8},
        "mixtral": {"model_type": "mixtral", "num_local_experts": 8, "num_experts_per_tok": 2},
        "deepseek_v3": {"model_type": "deepseek_v3", "n_routed_experts": 256,
                        "num_experts_per_tok": 8, "n_group": 8, "topk_method": "noaux_tc",
                        "scoring_func": "sigmoid", "norm_topk_prob": True},
        "gpt_oss": {"model_type": "gpt_oss", "num_local_experts": 128, "experts_per_token": 4},
    }  # fmt: skip
    config = configs[args.family]
    policy = select_policy(config, config_file=None).policy
    E, k = router_shape(config)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(
        f"[lynx demo] lynx_ops {lynx_ops.__version__}, torch {torch.__version__}, device {device}"
    )
    print(f"[lynx demo] policy {policy.describe()}")
    print(f"[lynx demo] example batch: {args.batch} decode rows, E={E}, k={k}; synthetic router "
          "logits (std 2 + per-expert skew std 1), not a trained model")  # fmt: skip

    gen = torch.Generator().manual_seed(args.seed)
    logits = torch.randn(args.batch, E, generator=gen) * 2 + torch.randn(E, generator=gen)
    bias = None
    if policy.scoring == lynx_ops.Scoring.SIGMOID_BIAS:
        bias = (torch.rand(E, generator=gen) - 0.5) * 0.2
        choice = torch.sigmoid(logits) + bias
        g = choice.view(args.batch, policy.num_expert_group, -1).topk(2, 2).values.sum(2)
        keep = torch.zeros_like(g, dtype=torch.bool).scatter_(1, g.topk(4, 1).indices, True)
        choice = choice.masked_fill(~keep.repeat_interleave(E // policy.num_expert_group, 1), -1e9)
        ids = choice.topk(k, 1).indices
        w = torch.sigmoid(logits).gather(1, ids)
        w = w / w.sum(1, keepdim=True)
    else:
        p = torch.softmax(logits, 1)
        w, ids = p.topk(k, 1)
        if policy.weight_rule == lynx_ops.WeightRule.RENORMALIZE:
            w = w / w.sum(1, keepdim=True)
    num_valid = torch.tensor([args.batch], dtype=torch.int32)
    op_inputs = [logits, w, ids.to(torch.int32), num_valid, bias]
    op_inputs = [t.to(device) if t is not None else None for t in op_inputs]
    call = (*op_inputs, *policy.op_args())

    t0 = time.perf_counter()
    ref_w, ref_ids, ref_touched = lynx_ops.remap_ref(*call)
    t_ref = time.perf_counter() - t0
    from lynx_ops.kernels.remap import remap_triton

    print("[lynx demo] running the Triton kernel"
          + (" in the interpreter (no GPU)..." if device == "cpu" else "..."), flush=True)  # fmt: skip
    t0 = time.perf_counter()
    out_w, out_ids, touched = remap_triton(*call)
    t_kernel = time.perf_counter() - t0

    same_ids = bool(torch.equal(out_ids.cpu(), ref_ids.cpu()))
    max_dw = float((out_w - ref_w).abs().max())
    kept_top1 = float((out_ids[:, 0] == ids.to(device)[:, 0]).float().mean())
    changed = int((out_ids.sort(1).values != ids.to(device).sort(1).values).any(1).sum())
    before, after = touched.tolist()[:2]
    print()
    print(f"{'':28s}{'stock':>10s}{'lynx':>10s}")
    print(f"{'distinct experts touched':28s}{before:>10d}{after:>10d}")
    print(f"{'rows remapped':28s}{0:>10d}{changed:>10d}")
    print(f"{'rows keeping their top-1':28s}{'100%':>10s}{kept_top1:>10.0%}")
    print(f"kernel == reference: ids {'identical' if same_ids else 'DIFFER'}, "
          f"max |weight diff| {max_dw:.2e}  (kernel {t_kernel * 1e3:.0f} ms incl. compile/interp, "
          f"reference {t_ref * 1e3:.1f} ms)")  # fmt: skip
    return 0 if same_ids and max_dw < 1e-4 and torch.equal(touched.cpu(), ref_touched.cpu()) else 1


if __name__ == "__main__":
    sys.exit(main())
