# SPDX-License-Identifier: Apache-2.0
"""Router realism for dummy-weight models: gate weights re-drawn for a chosen logit spread and skew.

vLLM's dummy weights are uniform in [-1e-3, 1e-3], so every router logit is ~0, every token is
low-confidence and any remap looks far better than on a trained model. `rescale_gates` makes each
MoE layer's router logits spread like a trained router's:

* the RMSNorm in front of the gate (the decoder layer's `post_attention_layernorm`) gets weight 1,
  so the gate input h = x / rms(x) has norm sqrt(hidden) whatever the dummy network computes;
* the gate is re-drawn as W[e] = spread * exp(skew * b[e]) * z[e] / sqrt(hidden), with z ~ N(0, I)
  and b ~ N(0, 1), so logit[e] = W[e] . h has std ~spread (in logits) across experts, and experts
  with a larger scale exp(skew * b[e]) land in the top-k more often: the popular and unpopular
  experts of a load-balanced but imperfect trained router. skew = 0 is a uniform router;
* additive biases (attention and expert projections, the router's own) are zeroed: dummy biases
  are the same for every token, and in a model with biases on its projections (GPT-OSS) they add
  up layer by layer to a shared component of the residual stream that outweighs the tokens' own,
  so every token routed alike (about 5 of 32 experts for 32 GPT-OSS tokens on an H100). The
  DeepSeek-V3 selection bias (`e_score_correction_bias`) is routing, not an additive bias: kept.

`draw_routers` runs while the model loads, through the `lynx_dummy` load format
(lynx_ops.bench.dummy_loader): after the dummy fill, before vLLM post-processes the weights (the CPU
backend packs linear weights and empties `layer.weight`; FP8 experts are quantized), so one path
serves every backend. `rescale_gates` is the after-load fallback for engines already loaded, where
the weights are still there. The stock and the Lynx run get the same seed, hence the same router.

Presets (`router_stats/*.json`, fitted by scripts/fit_router_presets.py, each with its sources and
fit error): `calibrated` (the default: the published Qwen3-30B-A3B router profile; also for families
without a published profile) and `calibrated-deepseek` (DeepSeek models, from published batch
unions); `optimistic` (spread 2, skew 1: the former default, far more confident than real routers);
`embedded` (the embedded trained model's router statistics). Every result names its preset.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import torch


def _model(worker: Any) -> torch.nn.Module:
    runner = getattr(worker, "model_runner", worker)
    return runner.model if hasattr(runner, "model") else runner.get_model()


def _gate_candidates(model: torch.nn.Module):
    """(name, module, num_experts) for each '*.gate' / '*.router' module with a weight, in a
    module whose child is a FusedMoE runner (the runner may hold the gate itself)."""
    from vllm.model_executor.layers.fused_moe.runner.moe_runner import MoERunner

    for name, module in model.named_modules():
        experts = next((c for c in module.children() if isinstance(c, MoERunner)), None)
        if experts is None:
            continue
        for child_name in ("gate", "router"):
            gate = getattr(module, child_name, None) or getattr(experts, child_name, None)
            if getattr(gate, "weight", None) is not None:
                yield f"{name}.{child_name}", gate, experts.moe_config.num_experts


def find_gates(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """Router gates: modules named '*.gate' or '*.router' whose weight is [num_experts, hidden]
    and whose parent holds a FusedMoE runner (the first such name per MoE block)."""
    gates: dict[str, torch.nn.Module] = {}
    blocks: set[str] = set()
    for name, gate, num_experts in _gate_candidates(model):
        block = name.rsplit(".", 1)[0]
        weight = gate.weight
        if block not in blocks and weight.dim() == 2 and weight.shape[0] == num_experts:
            gates[name] = gate
            blocks.add(block)
    return gates


@torch.no_grad()
def draw_routers(
    model: torch.nn.Module, spread: float, skew: float, seed: int = 0
) -> dict[str, Any]:
    """Re-draw every MoE gate of `model` in place (see the module docstring); returns what was done.

    Runs on the weights as loaded, before vLLM's `process_weights_after_loading` (the `lynx_dummy`
    load format, lynx_ops.bench.dummy_loader), so it works whatever vLLM later does with them: the
    CPU backend packs linear weights for its own GEMM and empties `layer.weight`."""
    gates = find_gates(model)
    if not gates:
        # Without a re-draw the dummy router decides, and its numbers are not reported.
        raise RuntimeError(
            "router realism: no MoE gate with a [num_experts, hidden] weight found to re-draw; a "
            "quantized gate (--quantization fp8 stores it transposed in FP8) is not supported and "
            "dummy-router results are not reported. To measure FP8 experts, quantize only them: "
            'quantization=online, quantization_config={"moe": "fp8_per_channel"}'
        )
    norms = 0
    for i, (name, gate) in enumerate(sorted(gates.items())):
        layer_prefix = name.split(".mlp")[0].split(".block_sparse_moe")[0].split(".feed_forward")[0]
        norm = _find(model, f"{layer_prefix}.post_attention_layernorm")
        if norm is not None and getattr(norm, "weight", None) is not None:
            norm.weight.fill_(1.0)
            norms += 1
        weight = gate.weight
        num_experts, dim = weight.shape
        gen = torch.Generator(device="cpu").manual_seed(seed * 100003 + i)
        z = torch.randn(num_experts, dim, generator=gen)
        scale = torch.exp(skew * torch.randn(num_experts, generator=gen))
        new = spread * scale[:, None] * z / math.sqrt(dim)
        weight.copy_(new.to(device=weight.device, dtype=weight.dtype))
    biases = zero_additive_biases(model)
    return {"gates": len(gates), "norms_set": norms, "biases_zeroed": biases, "spread": spread,
            "skew": skew, "seed": seed}  # fmt: skip


def rescale_gates(worker: Any, spread: float, skew: float, seed: int = 0) -> dict[str, Any]:
    """Fallback: the same re-draw on a loaded engine's worker (`LLM.collective_rpc(rescale_gates,
    args=...)`). Only where vLLM keeps the gate weights after loading (GPU, or a CPU without a
    packed GEMM path); elsewhere it raises, naming the `lynx_dummy` load format to use instead."""
    model = _model(worker)
    if any(gate.weight.numel() == 0 for _, gate, _ in _gate_candidates(model)):
        raise RuntimeError(
            "router realism after load: vLLM has packed this model's gate weights for its own "
            "GEMM and emptied `weight` (the CPU backend's oneDNN/AMX path), so they cannot be "
            "re-drawn now; load with load_format='lynx_dummy' (lynx_ops.bench.dummy_loader), "
            "which draws them before vLLM processes the weights"
        )
    return draw_routers(model, spread, skew, seed)


@torch.no_grad()
def zero_additive_biases(model: torch.nn.Module) -> int:
    """Zero every additive bias parameter (see the module docstring); returns how many."""
    count = 0
    for name, param in model.named_parameters():
        leaf = name.rsplit(".", 1)[-1]
        if (leaf == "bias" or leaf.endswith("_bias")) and leaf != "e_score_correction_bias":
            param.zero_()
            count += 1
    return count


def _find(model: torch.nn.Module, name: str) -> torch.nn.Module | None:
    try:
        return model.get_submodule(name)
    except AttributeError:
        return None


STATS_DIR = Path(__file__).resolve().parent / "router_stats"
PRESETS = ("calibrated", "calibrated-deepseek", "optimistic", "embedded")
# model_type -> the calibrated preset for it (every other model type: "calibrated")
_CALIBRATED_BY_MODEL_TYPE = {
    "deepseek_v2": "calibrated-deepseek",
    "deepseek_v3": "calibrated-deepseek",
}


@dataclasses.dataclass(frozen=True)
class Router:
    """Gate re-draw parameters and the name every table states."""

    spread: float
    skew: float
    name: str  # preset name, file path, or "custom"

    def describe(self) -> str:
        return describe(self.spread, self.skew, self.name)

    def loader_config(self, seed: int = 0) -> dict[str, Any]:
        """`model_loader_extra_config` for the `lynx_dummy` load format."""
        return {"spread": self.spread, "skew": self.skew, "seed": seed, "router": self.name}


def describe(spread: float, skew: float, source: str | None = None) -> str:
    named = f"router preset {source}: " if source else ""
    return f"{named}dummy weights, gates re-drawn to logit spread {spread:g}, expert skew {skew:g}"


def resolve(router: str, model_type: str | None = None) -> Router:
    """A preset name (`calibrated` picks the family's calibrated preset from `model_type`) or the
    path of a router statistics file (scripts/export_router_stats.py or a preset file)."""
    name = router
    if router == "calibrated":
        name = _CALIBRATED_BY_MODEL_TYPE.get(model_type or "", "calibrated")
    if name in PRESETS:
        spread, skew = load_stats(str(STATS_DIR / f"{name}.json"))[:2]
        return Router(spread, skew, name)
    if not Path(router).is_file():
        raise SystemExit(f"--router {router!r}: neither a preset ({', '.join(PRESETS)}) nor a "
                         "router statistics file")  # fmt: skip
    spread, skew, _ = load_stats(router)
    return Router(spread, skew, router)


def load_stats(path: str) -> tuple[float, float, str]:
    """(spread, skew, source) from a file written by scripts/export_router_stats.py or
    scripts/fit_router_presets.py."""
    import json

    try:
        record = json.loads(Path(path).read_text())
        spread, skew = float(record["spread"]), float(record["skew"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise SystemExit(f"--router-stats {path}: not a router statistics file ({e})") from None
    if not (math.isfinite(spread) and math.isfinite(skew)) or spread <= 0 or skew < 0:
        raise SystemExit(f"--router-stats {path}: spread must be > 0 and skew >= 0")
    source = record.get("preset") or f"the {record.get('model', '?')} model's router statistics"
    return spread, skew, source


def expected_union(num_experts: int, top_k: int, batch: int) -> float:
    """Distinct experts a batch touches under uniform routing (docs/ALGORITHM.md): E(1-(1-k/E)^B)."""
    return num_experts * (1.0 - math.pow(1.0 - top_k / num_experts, batch))
