# SPDX-License-Identifier: Apache-2.0
"""Offline fixed-batch workload, one engine per process (stock, Lynx or ceiling is the caller's
environment). `python -m lynx_ops.bench.offline SPEC.json` prints progress lines on stderr and one
`RESULT {json}` line on stdout.

Per batch size B: B requests of `input_len` random prompt tokens each, `output_len` tokens out,
greedy, ignore_eos, all submitted at once, so after the prefill step every step is a uniform decode
step of B rows. Decode time per output token is differential: each repeat times a short run
(`output_len // 4` tokens) and the full run of the same prompts, and
TPOT = (full - median short) / (output_len - short_len). Both runs pay the same prefill, request
setup and teardown, so only decode steps remain in the difference (a max_tokens=1 baseline was not
comparable: on an H100 it took longer than the full run at B=32). A row whose difference is not
positive is marked invalid rather than reported. NVML samples and the Lynx per-layer counters cover
the full runs only.
"""

from __future__ import annotations

import json
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any


def progress(msg: str) -> None:
    print(f"PROGRESS {msg}", file=sys.stderr, flush=True)


def lora_requests(lora: dict | None, batch: int):
    """One LoRARequest per prompt, round-robin over the adapters (None: no LoRA)."""
    if not lora:
        return None
    from vllm.lora.request import LoRARequest

    paths = lora["paths"]
    picks = [i % len(paths) for i in range(batch)]
    return [LoRARequest(f"adapter{j}", j + 1, paths[j]) for j in picks]


_SPEC_COUNTERS = ("vllm:spec_decode_num_drafts", "vllm:spec_decode_num_accepted_tokens")


def _spec_counts(llm) -> dict[str, int] | None:
    """Speculative-decoding counters (drafts, accepted tokens) so far; None without speculative
    decoding or without stats (engine arg disable_log_stats=false)."""
    if llm.llm_engine.vllm_config.speculative_config is None:
        return None
    try:
        metrics = llm.get_metrics()
    except Exception:  # stats disabled: no Prometheus registry to read
        return None
    counts = {m.name: int(getattr(m, "value", 0)) for m in metrics if m.name in _SPEC_COUNTERS}
    return counts if len(counts) == len(_SPEC_COUNTERS) else None


def _acceptance(before: dict[str, int] | None, after: dict[str, int] | None) -> dict[str, float]:
    """Mean tokens per verification step (1 + accepted per draft) over the timed runs. Lynx
    changes the generated tokens and with them the n-gram drafts' acceptance, so TPOT alone mixes
    the step time with the acceptance; TPOT x this length estimates the time per step."""
    if not before or not after:
        return {}
    drafts = after[_SPEC_COUNTERS[0]] - before[_SPEC_COUNTERS[0]]
    accepted = after[_SPEC_COUNTERS[1]] - before[_SPEC_COUNTERS[1]]
    return {"spec_drafts": drafts, "spec_accepted": accepted,
            "spec_tokens_per_step": 1 + accepted / drafts if drafts else None}  # fmt: skip


def engine_kwargs(spec: dict[str, Any]) -> dict[str, Any]:
    """LLM(...) keyword arguments for a spec: its engine arguments, and router realism (spread,
    skew) as the `lynx_dummy` load format, which draws the gates while the model loads."""
    kwargs = {"load_format": spec.get("load_format", "dummy"), **spec.get("engine", {})}
    if spec.get("spread") is not None:
        if kwargs["load_format"] != "dummy":
            raise ValueError("router realism (spread) needs dummy weights, not load_format="
                             f"{kwargs['load_format']!r}")  # fmt: skip
        from lynx_ops.bench.router_realism import Router

        router = Router(spec["spread"], spec.get("skew", 0.0), spec.get("router_name") or "custom")
        kwargs["load_format"] = "lynx_dummy"
        kwargs["model_loader_extra_config"] = router.loader_config(spec.get("seed", 0))
        # Every worker imports the extension before loading, which registers the load format
        # there too (workers in their own processes under tensor parallelism).
        kwargs.setdefault("worker_extension_cls", "lynx_ops.bench.worker_ext.LynxBenchWorker")
    return kwargs


def run(spec: dict[str, Any]) -> dict[str, Any]:
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    from lynx_ops import plugin
    from lynx_ops.bench import dummy_loader  # registers the lynx_dummy load format here
    from lynx_ops.bench.nvml import NvmlSampler
    from lynx_ops.bench.worker_ext import lynx_reset, lynx_snapshot, summarize

    t0 = time.perf_counter()
    progress(f"starting engine for {spec['model']}")
    llm = LLM(model=spec["model"], skip_tokenizer_init=True, seed=0, **engine_kwargs(spec))
    lynx = plugin.is_installed()
    out: dict[str, Any] = {"startup_s": round(time.perf_counter() - t0, 1), "lynx": lynx}
    if spec.get("spread") is not None:
        out["router"] = llm.collective_rpc(dummy_loader.last_draw)[0]
    rng = random.Random(0)
    vocab = int(spec.get("vocab", 30000))
    sampler = NvmlSampler()
    in_len, out_len, repeats = spec["input_len"], spec["output_len"], spec.get("repeats", 3)
    rows = []
    for batch in spec["batches"]:
        prompts = [TokensPrompt(prompt_token_ids=[rng.randrange(3, vocab) for _ in range(in_len)])
                   for _ in range(batch)]  # fmt: skip
        lora = lora_requests(spec.get("lora"), batch)
        full = SamplingParams(max_tokens=out_len, temperature=0.0, ignore_eos=True)
        short_len = max(2, out_len // 4)
        short = SamplingParams(max_tokens=short_len, temperature=0.0, ignore_eos=True)
        # Warm-up: both lengths once (first use of a size compiles or tunes kernels).
        llm.generate(prompts, full, use_tqdm=False, lora_request=lora)
        llm.generate(prompts, short, use_tqdm=False, lora_request=lora)
        short_s, full_s = [], []
        for _ in range(repeats):
            t = time.perf_counter()
            llm.generate(prompts, short, use_tqdm=False, lora_request=lora)
            short_s.append(time.perf_counter() - t)
        if lynx:
            llm.collective_rpc(lynx_reset)
        spec_before = _spec_counts(llm)
        sampler.start()
        for r in range(repeats):
            t = time.perf_counter()
            llm.generate(prompts, full, use_tqdm=False, lora_request=lora)
            full_s.append(time.perf_counter() - t)
            progress(f"B={batch} repeat {r + 1}/{repeats}: {full_s[-1]:.3f} s")
        telemetry = sampler.stop()
        acceptance = _acceptance(spec_before, _spec_counts(llm))
        base = statistics.median(short_s)
        tpot = [(f - base) / max(out_len - short_len, 1) for f in full_s]
        valid = statistics.median(tpot) > 0
        row = {
            "batch": batch, "input_len": in_len, "output_len": out_len, "repeats": repeats,
            "short_len": short_len, "valid": valid,
            "tpot_ms_median": 1000 * statistics.median(tpot) if valid else None,
            "tpot_ms_mean": 1000 * statistics.mean(tpot) if valid else None,
            "total_s_median": statistics.median(full_s),
            "short_s_median": base,
            "output_tok_s": batch * out_len / statistics.median(full_s),
        }  # fmt: skip
        row.update({k: v for k, v in telemetry.items() if k != "seconds"})
        row.update(acceptance)
        if valid and acceptance.get("spec_tokens_per_step"):
            row["ms_per_spec_step"] = row["tpot_ms_median"] * acceptance["spec_tokens_per_step"]
        if "energy_j" in telemetry:
            row["energy_mj_per_token"] = 1000 * telemetry["energy_j"] / (batch * out_len * repeats)
        if lynx:
            summary = summarize(llm.collective_rpc(lynx_snapshot)[0])
            row.update({k: v for k, v in summary.items() if k != "top1_kept"})
        rows.append(row)
        if valid:
            per_step = (f", {acceptance['spec_tokens_per_step']:.2f} tokens per step"
                        if acceptance.get("spec_tokens_per_step") else "")  # fmt: skip
            progress(
                f"B={batch}: TPOT {row['tpot_ms_median']:.2f} ms (median of {repeats}){per_step}"
            )
        else:
            progress(f"B={batch}: INVALID: the {out_len}-token runs (median {statistics.median(full_s):.3f} s) "
                     f"were not slower than the {short_len}-token runs ({base:.3f} s); "
                     "raise --output-len or --repeats")  # fmt: skip
    out["rows"] = rows
    return out


if __name__ == "__main__":
    result = run(json.loads(Path(sys.argv[1]).read_text()))
    print("RESULT " + json.dumps(result), flush=True)
