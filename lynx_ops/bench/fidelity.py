# SPDX-License-Identifier: Apache-2.0
"""Decode-phase fidelity: does the remap change what the model predicts?

One engine per process (stock or Lynx is the caller's environment), on any local checkpoint with
a tokenizer. For each batch size B, B held-out text windows (lynx_ops.embedded.corpus):
* teacher-forced decode log-likelihood: the prompt is the window's first `prompt_len` tokens; the
  next `forced_len` tokens are produced one per step (the first by the prefill step, which is not
  scored; the rest by *decode steps*) with the reference token forced at each
  step by a logits processor (`TeacherForcing`), while vLLM reports the raw logprob of that token
  (logprobs_mode=raw_logprobs: before any processor). So the remap acts exactly as in real decode,
  and the sum of those logprobs is the model's log-likelihood of the reference continuation;
* greedy outputs from the same prompts, compared stock vs Lynx by the caller.
Lynx's per-layer expert counts and the share of rows that keep their top-1 expert (decode steps,
mean over layers) come with each batch size.

    python -m lynx_ops.bench.fidelity SPEC.json  ->  "RESULT {json}" on stdout
"""

from __future__ import annotations

import json
import math
import statistics
import sys
from pathlib import Path
from typing import Any

import torch
from vllm.sampling_params import SamplingParams
from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor
from vllm.v1.sample.logits_processor.builtin import process_dict_updates

FORCE_KEY = "lynx_force"  # SamplingParams.extra_args key: the token ids to force, in order


class TeacherForcing(LogitsProcessor):
    """Forces request r's i-th output token to extra_args['lynx_force'][i] (if given)."""

    def __init__(self, vllm_config, device: torch.device, is_pin_memory: bool) -> None:
        self.targets: dict[int, tuple[list[int], list[int]]] = {}

    @classmethod
    def validate_params(cls, params: SamplingParams) -> None:
        force = (params.extra_args or {}).get(FORCE_KEY)
        if force is not None and not all(isinstance(t, int) and t >= 0 for t in force):
            raise ValueError(f"{FORCE_KEY} must be a list of token ids")

    def is_argmax_invariant(self) -> bool:
        return False

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        def new_state(params, _prompt, output_ids):
            force = (params.extra_args or {}).get(FORCE_KEY)
            return (force, output_ids) if force else None

        process_dict_updates(self.targets, batch_update, new_state)

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        for row, (force, output_ids) in self.targets.items():
            pos = len(output_ids)
            if pos < len(force):
                keep = logits[row, force[pos]].clone()
                logits[row].fill_(float("-inf"))
                logits[row, force[pos]] = keep
        return logits


def window_order(tokenizer, length: int, source: str = "stdlib") -> list[tuple[list[int], int]]:
    """Every held-out window of `length` tokens of corpus `source` (the model's own,
    corpus.of_model) with the index of its document, one per document first: the first window of
    every document, then the second of every document, and so on. Windows of one document share
    experts far more than independent requests do, so a batch of consecutive windows of one
    document would overstate the reduction; up to the number of held-out documents (34 of the
    standard library on Python 3.11) every window of a batch comes from its own document.
    Tokenizing the corpus is the slow part: build the order once and cut every window set from
    it (`windows(..., order=)`)."""
    from lynx_ops.embedded import corpus

    per_file = []
    for _, text in corpus.documents("heldout", source):
        ids = tokenizer.encode(text)
        per_file.append([ids[s : s + length] for s in range(0, len(ids) - length, length)])
    return [(wins[rank], file_index)
            for rank in range(max((len(w) for w in per_file), default=0))
            for file_index, wins in enumerate(per_file) if rank < len(wins)]  # fmt: skip


def windows(tokenizer, count: int, length: int, window_set: int = 0, source: str = "stdlib",
            order: list[tuple[list[int], int]] | None = None) -> tuple[list[list[int]], list[int]]:  # fmt: skip
    """`count` windows of `length` tokens and their documents' indices: window set s is the s-th
    run of `count` windows of `window_order`, so sets share no window (set 0 is what one set
    always was); rows report how many documents a batch drew on."""
    if order is None:
        order = window_order(tokenizer, length, source)
    chosen = order[window_set * count : (window_set + 1) * count]
    if len(chosen) < count:
        raise ValueError(f"held-out corpus has {len(order)} windows of {length} tokens: not enough "
                         f"for window set {window_set} of {count}")  # fmt: skip
    return [w for w, _ in chosen], [f for _, f in chosen]


def run(spec: dict[str, Any]) -> dict[str, Any]:
    from vllm import LLM

    from lynx_ops import plugin
    from lynx_ops.embedded import corpus

    source = corpus.of_model(spec["model"])
    llm = LLM(model=spec["model"], seed=0, logprobs_mode="raw_logprobs",
              logits_processors=[TeacherForcing], **spec.get("engine", {}))  # fmt: skip
    lynx = plugin.is_installed()
    tok = llm.get_tokenizer()
    p_len, f_len = spec["prompt_len"], spec["forced_len"]
    result: dict[str, Any] = {"lynx": lynx, "corpus": source, "rows": []}
    order = window_order(tok, p_len + f_len, source)  # once: every window set is cut from it
    if spec.get("timed"):  # warm-up first, then timed greedy decode (main job)
        pool, _ = windows(tok, max(spec["batches"]), p_len + f_len, order=order)
        result["timed"] = _timed(llm, pool, p_len, spec["timed"], lynx)
    for window_set in range(spec.get("window_sets", 1)):
        pool, sources = windows(tok, max(spec["batches"]), p_len + f_len, window_set, order=order)
        for batch in spec["batches"]:
            result["rows"].append(_score_batch(llm, pool[:batch], sources[:batch], spec, lynx))
            result["rows"][-1]["window_set"] = window_set
            print(f"PROGRESS set {window_set} B={batch}: nll/token "
                  f"{result['rows'][-1]['nll_per_token']:.4f}", file=sys.stderr, flush=True)  # fmt: skip
    return result


def _score_batch(llm, wins: list[list[int]], sources: list[int], spec: dict, lynx: bool) -> dict:
    """One batch of windows decoded together: teacher-forced decode NLL, greedy outputs (unless
    the spec sets greedy_len 0), and Lynx's counters over its decode steps."""
    from vllm.inputs import TokensPrompt

    from lynx_ops.bench.worker_ext import lynx_reset, lynx_snapshot, summarize

    p_len, f_len = spec["prompt_len"], spec["forced_len"]
    prompts = [TokensPrompt(prompt_token_ids=w[:p_len]) for w in wins]
    if lynx:
        llm.collective_rpc(lynx_reset)
    forced = [SamplingParams(max_tokens=f_len, temperature=0.0, logprobs=0, ignore_eos=True,
                             extra_args={FORCE_KEY: w[p_len:]}) for w in wins]  # fmt: skip
    outs = llm.generate(prompts, forced, use_tqdm=False)
    nll, follows = [], True
    for w, o in zip(wins, outs, strict=True):
        got = list(o.outputs[0].token_ids)
        follows &= got == w[p_len:]
        # output 0 comes from the prefill step; the rest from decode steps, which Lynx remaps
        for pos, lp in list(zip(got, o.outputs[0].logprobs, strict=True))[1:]:
            nll.append(-lp[pos].logprob)
    summary = summarize(llm.collective_rpc(lynx_snapshot)[0]) if lynx else {}
    greedy_len = spec.get("greedy_len", f_len)
    greedy = llm.generate(prompts, SamplingParams(max_tokens=greedy_len, temperature=0.0),
                          use_tqdm=False) if greedy_len else []  # fmt: skip
    return {
        "batch": len(wins), "documents": len(set(sources)),
        "tokens_scored": len(nll), "forced_tokens_followed": follows,
        "nll_per_token": statistics.mean(nll), "perplexity": math.exp(statistics.mean(nll)),
        "greedy": [list(g.outputs[0].token_ids) for g in greedy],
        "experts_before": summary.get("experts_before"),
        "experts_after": summary.get("experts_after"),
        "top1_kept": summary.get("top1_kept"), "moved_share": summary.get("moved_share"),
    }  # fmt: skip


def _timed(llm, pool: list[list[int]], prompt_len: int, timed: dict, lynx: bool) -> dict[str, Any]:
    """Greedy generation of `tokens` per prompt for `batch` prompts: once to warm up (first use
    compiles), then `repeats` timed runs; output tokens/s is the median."""
    import time

    from vllm.inputs import TokensPrompt

    from lynx_ops.bench.worker_ext import lynx_reset, lynx_snapshot, summarize

    prompts = [TokensPrompt(prompt_token_ids=w[:prompt_len]) for w in pool[: timed["batch"]]]
    params = SamplingParams(max_tokens=timed["tokens"], temperature=0.0, ignore_eos=True)
    llm.generate(prompts, params, use_tqdm=False)
    if lynx:
        llm.collective_rpc(lynx_reset)
    seconds = []
    for _ in range(timed.get("repeats", 2)):
        t0 = time.perf_counter()
        outs = llm.generate(prompts, params, use_tqdm=False)
        seconds.append(time.perf_counter() - t0)
    summary = summarize(llm.collective_rpc(lynx_snapshot)[0]) if lynx else {}
    return {"tokens_per_s": timed["batch"] * timed["tokens"] / statistics.median(seconds),
            "seconds": seconds, "texts": [o.outputs[0].text for o in outs],
            "experts_before": summary.get("experts_before"),
            "experts_after": summary.get("experts_after")}  # fmt: skip


if __name__ == "__main__":
    print("RESULT " + json.dumps(run(json.loads(Path(sys.argv[1]).read_text()))), flush=True)
