# SPDX-License-Identifier: Apache-2.0
"""One vLLM engine run, in its own process: build, optionally re-draw the gates, generate, report.

    python -m lynx_ops.bench.engine_job SPEC.json  ->  prints one JSON line prefixed "RESULT "

Whether Lynx is on is the caller's environment (VLLM_LYNX_ENABLED), read by the plugin when vLLM
starts. The spec: model (dir), load_format, prompts (token-id lists), phases (list of
{"name", "max_tokens"}), spread/skew (router realism; null = leave the gates), engine (extra LLM
kwargs). Each phase reports token ids and the Lynx counters accumulated during it.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path


def _lynx_snapshot(worker):
    from lynx_ops.integration import layers

    return {"layers": layers.snapshot(), "decisions": dict(layers.DECISIONS)}


def _lynx_reset(worker):
    from lynx_ops.integration import layers

    layers.reset()


def _lynx_active() -> bool:
    from lynx_ops import plugin

    return bool(plugin._STATE["installed"])


def main(spec_path: str) -> None:
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    from lynx_ops.bench import router_realism

    spec = json.loads(Path(spec_path).read_text())
    t0 = time.perf_counter()
    llm = LLM(model=spec["model"], load_format=spec.get("load_format", "dummy"),
              skip_tokenizer_init=spec.get("skip_tokenizer_init", True), seed=0,
              **spec.get("engine", {}))  # fmt: skip
    startup_s = time.perf_counter() - t0
    prompts = [TokensPrompt(prompt_token_ids=p) for p in spec["prompts"]]
    result = {"startup_s": round(startup_s, 1), "lynx_installed": _lynx_active(), "phases": []}

    if spec.get("spread") is not None:
        result["router"] = llm.collective_rpc(
            router_realism.rescale_gates, args=(spec["spread"], spec.get("skew", 0.0), 0)
        )[0]

    for phase in spec["phases"]:
        if result["lynx_installed"]:
            llm.collective_rpc(_lynx_reset)
        params = SamplingParams(max_tokens=phase["max_tokens"], temperature=0.0, ignore_eos=True)
        t0 = time.perf_counter()
        outs = llm.generate(prompts, params, use_tqdm=False)
        entry = {"name": phase["name"], "seconds": round(time.perf_counter() - t0, 3),
                 "tokens": [list(o.outputs[0].token_ids) for o in outs]}  # fmt: skip
        if result["lynx_installed"]:
            entry["lynx"] = llm.collective_rpc(_lynx_snapshot)[0]
        result["phases"].append(entry)
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
