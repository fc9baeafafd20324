# SPDX-License-Identifier: Apache-2.0
"""Random-weight LoRA adapters on an MoE model's experts, written locally (no download), for the
multi-LoRA benchmark and the GPU test of vLLM's fused-MoE LoRA path.

`write_adapters(model_dir, out_dir, count, rank)` reads the model's `config.json` and writes
`count` PEFT adapters (`adapter_config.json` + `adapter_model.safetensors`) that put a rank-`rank`
LoRA on every routed expert's three projections of every MoE layer, in the per-expert layout
vLLM's loader packs (`...mlp.experts.<e>.gate_proj.lora_A.weight`). The weights are random (a
fixed seed per adapter), scaled so the adapter changes activations a little without overflowing:
enough for the LoRA kernels to do their full work, which is what the benchmark times.
"""

from __future__ import annotations

import json
from pathlib import Path

# model_type -> (MoE block attribute, (gate, up, down) projection names)
_EXPERT_NAMES = {
    "qwen3_moe": ("mlp", ("gate_proj", "up_proj", "down_proj")),
    "qwen2_moe": ("mlp", ("gate_proj", "up_proj", "down_proj")),
    "deepseek_v2": ("mlp", ("gate_proj", "up_proj", "down_proj")),
    "deepseek_v3": ("mlp", ("gate_proj", "up_proj", "down_proj")),
    "mixtral": ("block_sparse_moe", ("w1", "w3", "w2")),
}
SUPPORTED = tuple(sorted(_EXPERT_NAMES))


def _moe_layers(cfg: dict) -> list[int]:
    layers = range(int(cfg["num_hidden_layers"]))
    if cfg["model_type"].startswith("deepseek"):
        first_dense = int(cfg.get("first_k_dense_replace", 0))
        return [i for i in layers if i >= first_dense]
    if cfg["model_type"] in ("qwen3_moe", "qwen2_moe"):
        dense = set(cfg.get("mlp_only_layers", []))
        step = int(cfg.get("decoder_sparse_step", 1))
        return [i for i in layers if i not in dense and (i + 1) % step == 0]
    return list(layers)


def _shapes(cfg: dict) -> tuple[int, int, int]:
    """(hidden, expert intermediate, routed experts) from a config.json dict."""
    from lynx_ops.registry import router_shape

    inter = int(cfg.get("moe_intermediate_size") or cfg["intermediate_size"])
    return int(cfg["hidden_size"]), inter, router_shape(cfg)[0]


def write_adapters(model_dir: str | Path, out_dir: str | Path, count: int, rank: int = 16,
                   seed: int = 0) -> list[Path]:  # fmt: skip
    """Write `count` adapters under out_dir/adapter<i>; return their directories."""
    import torch
    from safetensors.torch import save_file

    cfg = json.loads((Path(model_dir) / "config.json").read_text())
    model_type = cfg.get("model_type")
    if model_type not in _EXPERT_NAMES:
        raise ValueError(f"no expert LoRA layout for model_type {model_type!r} "
                         f"(supported: {', '.join(SUPPORTED)})")  # fmt: skip
    if count < 1 or rank < 1:
        raise ValueError(f"need count >= 1 and rank >= 1, got count={count}, rank={rank}")
    block, (gate, up, down) = _EXPERT_NAMES[model_type]
    hidden, inter, experts = _shapes(cfg)
    # in/out features per projection: gate and up map hidden -> inter, down maps inter -> hidden.
    projections = {gate: (hidden, inter), up: (hidden, inter), down: (inter, hidden)}
    paths = []
    for i in range(count):
        gen = torch.Generator().manual_seed(seed + i)
        tensors = {}
        for layer in _moe_layers(cfg):
            for e in range(experts):
                prefix = f"base_model.model.model.layers.{layer}.{block}.experts.{e}"
                for name, (fan_in, fan_out) in projections.items():
                    a = torch.randn(rank, fan_in, generator=gen) / fan_in**0.5
                    b = torch.randn(fan_out, rank, generator=gen) * (0.1 / rank**0.5)
                    tensors[f"{prefix}.{name}.lora_A.weight"] = a.to(torch.bfloat16)
                    tensors[f"{prefix}.{name}.lora_B.weight"] = b.to(torch.bfloat16)
        path = Path(out_dir) / f"adapter{i}"
        path.mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(path / "adapter_model.safetensors"))
        (path / "adapter_config.json").write_text(json.dumps({
            "peft_type": "LORA", "r": rank, "lora_alpha": rank, "lora_dropout": 0.0,
            "bias": "none", "target_modules": [gate, up, down], "task_type": "CAUSAL_LM",
            "base_model_name_or_path": str(model_dir),
        }, indent=1))  # fmt: skip
        paths.append(path)
    return paths
