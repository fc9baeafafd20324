# SPDX-License-Identifier: Apache-2.0
"""Train the embedded default model (a small Qwen3-MoE on the Python standard library's sources) or
the Qwen3-shaped proxy (128 experts, top-8, on the larger `proxy` corpus).

    python scripts/train_embedded_model.py --minutes 12 --out lynx_ops/embedded/model
    python scripts/train_embedded_model.py --arch qwen3-proxy --corpus proxy --minutes 11 \
        [--corpus-archive proxy_train.jsonl.xz] --out DIR

The proxy's archive comes from `lynx_ops.embedded.corpus.write_archive(F, "proxy")` on a
machine set up from the lock, for a GPU host that lacks those packages.

Reproducible: fixed seed, the corpus split of lynx_ops/embedded/corpus.py (held-out files are kept
out of the tokenizer and the model), and everything recorded in `training.json` beside the weights
(command, seed, Python/torch/transformers versions, corpus fingerprints, steps, losses, device).
Architecture: 4 layers, hidden 256, 32 experts, top-4 (renormalised), expert width 96, tied
embeddings, vocab 4096 byte-level BPE; trained with the load-balancing loss (router_aux_loss_coef),
so its router spreads tokens the way production MoE routers do. bf16 safetensors: about 23 MiB.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import random
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lynx_ops.embedded import corpus  # noqa: E402

ARCH = dict(
    vocab_size=4096, hidden_size=256, intermediate_size=768, moe_intermediate_size=96,
    num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, head_dim=64,
    num_experts=32, num_experts_per_tok=4, norm_topk_prob=True, decoder_sparse_step=1,
    mlp_only_layers=[], max_position_embeddings=2048, rope_theta=10000.0, rms_norm_eps=1e-6,
    tie_word_embeddings=True, router_aux_loss_coef=0.01, output_router_logits=False,
    bos_token_id=1, eos_token_id=0, pad_token_id=0,
)  # fmt: skip
# The Qwen3-30B-A3B router shape (128 experts, top-8, renormalised) at a size that trains in minutes
# and stays under 16 MiB in bf16: 4 layers, hidden 128, expert width 32.
PROXY_ARCH = {**ARCH, "hidden_size": 128, "intermediate_size": 384, "moe_intermediate_size": 32,
              "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 32,
              "num_experts": 128, "num_experts_per_tok": 8}  # fmt: skip
ARCHS = {"embedded": ARCH, "qwen3-proxy": PROXY_ARCH}
SPECIAL = ["<|endoftext|>", "<|bos|>"]


def train_tokenizer(texts: list[str], vocab: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=SPECIAL, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())  # fmt: skip
    tok.train_from_iterator(texts, trainer)
    return tok


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="lynx_ops/embedded/model")
    ap.add_argument("--minutes", type=float, default=12.0, help="training time budget")
    ap.add_argument("--max-steps", type=int, default=100_000)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--arch", choices=sorted(ARCHS), default="embedded")
    ap.add_argument("--corpus", choices=corpus.SOURCES, default="stdlib")
    ap.add_argument("--corpus-archive", help="read the corpus from this xz archive "
                    "(corpus.write_archive) instead of this machine's files")  # fmt: skip
    ap.add_argument(
        "--eval-every",
        type=int,
        default=200,
        help="steps between held-out evaluations; the best checkpoint is kept",
    )
    ap.add_argument("--evaluate", metavar="DIR",
                    help="only measure held-out and train loss of the checkpoint in DIR and record "
                         "them in its training.json")  # fmt: skip
    args = ap.parse_args()
    if args.evaluate:
        evaluate_checkpoint(Path(args.evaluate))
        return

    from transformers import PreTrainedTokenizerFast, Qwen3MoeConfig, Qwen3MoeForCausalLM

    random.seed(args.seed)
    torch.manual_seed(args.seed)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    t_start = time.perf_counter()
    arch = ARCHS[args.arch]
    train_docs = corpus.documents("train", args.corpus, args.corpus_archive)
    heldout_docs = corpus.documents("heldout", args.corpus, args.corpus_archive)
    train_texts = [t for _, t in train_docs]
    tok = train_tokenizer(train_texts, arch["vocab_size"])
    eos = tok.token_to_id("<|endoftext|>")
    ids: list[int] = []
    for enc in tok.encode_batch(train_texts):
        ids.extend(enc.ids + [eos])
    data = torch.tensor(ids, dtype=torch.long)
    print(f"corpus {args.corpus}: {len(train_docs)} train documents ({len(data)} tokens), "
          f"{len(heldout_docs)} held out; tokenizer in {time.perf_counter() - t_start:.0f} s",
          flush=True)  # fmt: skip

    heldout = token_windows(tok, [t for _, t in heldout_docs], eos, args.seq_len).to(device)
    config = Qwen3MoeConfig(**arch)
    model = Qwen3MoeForCausalLM(config).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.1)
    budget_s = args.minutes * 60
    gen = torch.Generator().manual_seed(args.seed)
    t0, step, losses = time.perf_counter(), 0, []
    warmup = 200
    # The corpus is small (about 2.5M tokens), so a long run memorises it: keep the weights with the
    # lowest held-out loss (an earlier run without this ended at train loss 0.36, held-out 4.64).
    best = {"loss": float("inf"), "step": 0, "state": None}
    evals: list[list[float]] = []
    while step < args.max_steps and time.perf_counter() - t0 < budget_s:
        frac = min(1.0, (time.perf_counter() - t0) / budget_s)
        lr = args.lr * min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * frac))
        for group in opt.param_groups:
            group["lr"] = lr
        starts = torch.randint(0, len(data) - args.seq_len - 1, (args.batch,), generator=gen)
        batch = torch.stack([data[s : s + args.seq_len + 1] for s in starts.tolist()]).to(device)
        with torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda"):
            out = model(input_ids=batch[:, :-1], labels=batch[:, :-1].clone(),
                        output_router_logits=True)  # fmt: skip
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(out.loss.item())
        step += 1
        if step % 100 == 0 or step == 1:
            print(f"step {step} loss {statistics_mean(losses[-100:]):.3f} lr {lr:.2e} "
                  f"{time.perf_counter() - t0:.0f} s", flush=True)  # fmt: skip
        if step % args.eval_every == 0:
            held = mean_loss(model, heldout, device)
            evals.append([step, round(statistics_mean(losses[-100:]), 4), round(held, 4)])
            print(f"step {step} held-out loss {held:.3f}", flush=True)
            if held < best["loss"]:
                state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
                best.update(loss=held, step=step, state=state)
    held = mean_loss(model, heldout, device)
    evals.append([step, round(statistics_mean(losses[-100:]), 4), round(held, 4)])
    if best["state"] is not None and best["loss"] < held:
        model.load_state_dict(best["state"])
        print(f"keeping step {best['step']} (held-out loss {best['loss']:.3f}; last {held:.3f})")
    else:
        best.update(loss=held, step=step)

    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.config.output_router_logits = False
    model.to(torch.bfloat16).save_pretrained(out_dir, safe_serialization=True)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>",
                                   bos_token="<|bos|>", pad_token="<|endoftext|>")  # fmt: skip
    fast.save_pretrained(out_dir)
    import transformers

    record = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "seed": args.seed, "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "python": platform.python_version(), "torch": torch.__version__,
        "transformers": transformers.__version__, "arch": args.arch, "architecture": arch,
        "corpus": {"name": args.corpus, "archive": args.corpus_archive,
                   "train_files": len(train_docs), "heldout_files": len(heldout_docs),
                   "train_tokens": len(data),
                   "train_fingerprint": corpus.fingerprint_documents(train_docs),
                   "heldout_fingerprint": corpus.fingerprint_documents(heldout_docs),
                   "heldout_every": corpus.HELD_OUT_EVERY},
        "steps": step, "seq_len": args.seq_len, "batch": args.batch, "lr": args.lr,
        "minutes": round((time.perf_counter() - t0) / 60, 2),
        "final_loss_mean_last_100": statistics_mean(losses[-100:]),
        "kept_step": best["step"], "heldout_loss": round(best["loss"], 4),
        "heldout_tokens": heldout.numel(), "evals_step_train_heldout": evals,
    }  # fmt: skip
    (out_dir / "training.json").write_text(json.dumps(record, indent=1))
    size = sum(p.stat().st_size for p in out_dir.iterdir()) / 2**20
    print(f"saved {out_dir} ({size:.1f} MiB) after {step} steps", flush=True)


def token_windows(tok, texts, eos: int, seq_len: int, max_windows: int = 64) -> torch.Tensor:
    """Up to `max_windows` consecutive seq_len-token windows of the given texts, in order."""
    ids: list[int] = []
    for text in texts:
        ids.extend(tok.encode(text).ids + [eos])
        if len(ids) >= seq_len * max_windows:
            break
    n = min(len(ids) // seq_len, max_windows)
    return torch.tensor(ids[: n * seq_len], dtype=torch.long).view(n, seq_len)


@torch.no_grad()
def mean_loss(model, windows: torch.Tensor, device: str) -> float:
    was_training = model.training
    model.eval()
    total = 0.0
    for chunk in windows.split(16):
        with torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda"):
            total += model(input_ids=chunk, labels=chunk).loss.item() * chunk.shape[0]
    model.train(was_training)
    return total / max(windows.shape[0], 1)


def evaluate_checkpoint(model_dir: Path) -> None:
    """Held-out and train-file loss of a saved checkpoint, on this machine's corpus files."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    eos = tok.convert_tokens_to_ids("<|endoftext|>")
    record_path = model_dir / "training.json"
    record = json.loads(record_path.read_text())
    seq_len = record.get("seq_len", 256)
    source = corpus.of_model(model_dir)
    result = {}
    for split in ("heldout", "train"):
        texts = [t for _, t in corpus.documents(split, source)]
        windows = token_windows(tok.backend_tokenizer, texts, eos, seq_len)
        result[split] = round(mean_loss(model, windows, "cpu"), 4)
        print(f"{split}: {windows.numel()} tokens, loss {result[split]:.3f}", flush=True)
    record["evaluation"] = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "python": platform.python_version(), "heldout_loss": result["heldout"],
        "train_files_loss": result["train"], "tokens_each": 64 * seq_len,
        "note": "first 64 windows of each split, on the evaluating machine's standard library",
    }  # fmt: skip
    record_path.write_text(json.dumps(record, indent=1))


def statistics_mean(values: list[float]) -> float:
    return sum(values) / max(len(values), 1)


if __name__ == "__main__":
    main()
