# SPDX-License-Identifier: Apache-2.0
"""The `lynx_dummy` load format: vLLM's dummy weights, then routers drawn like trained ones.

    LLM(model=DIR, load_format="lynx_dummy",
        model_loader_extra_config={"spread": 1.2, "skew": 0.1, "seed": 0, "router": "calibrated"})
    vllm serve DIR --load-format lynx_dummy --model-loader-extra-config '{"spread": 1.2, ...}' \\
        --worker-extension-cls lynx_ops.bench.worker_ext.LynxBenchWorker

Registered through vLLM's extension point for loaders (`register_model_loader`) when this module is
imported: the benchmark imports it in its engine processes, and `LynxBenchWorker` (the benchmark's
worker extension, which vLLM imports in every worker before it loads the model) imports it too.
Nothing in the product imports it.

Why a loader: the re-draw must happen on the weights as loaded. After loading, vLLM processes them
for its kernels (the CPU backend packs every linear weight for oneDNN or AMX and leaves
`layer.weight` empty; online FP8 quantizes the experts), so a re-draw after load reads a gate of
shape [0] on those CPUs. `load_weights` runs before that processing, on every backend.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import torch
from vllm.model_executor.model_loader import register_model_loader
from vllm.model_executor.model_loader.base_loader import BaseModelLoader
from vllm.model_executor.model_loader.dummy_loader import DummyModelLoader

from lynx_ops.bench import router_realism

LOAD_FORMAT = "lynx_dummy"
logger = logging.getLogger("lynx_ops")
# What the last load in this process drew (for the benchmark's result rows; read by RPC).
LAST_DRAW: dict[str, Any] = {}


def parse_config(extra: dict[str, Any] | None) -> dict[str, Any]:
    """Validated `model_loader_extra_config`: spread > 0, skew >= 0 (finite), integer seed."""
    extra = dict(extra or {})
    unknown = sorted(set(extra) - {"spread", "skew", "seed", "router"})
    if unknown:
        raise ValueError(f"load format {LOAD_FORMAT}: unknown model_loader_extra_config keys "
                         f"{unknown} (known: spread, skew, seed, router)")  # fmt: skip
    if "spread" not in extra:
        raise ValueError(f"load format {LOAD_FORMAT}: model_loader_extra_config needs 'spread'")
    try:
        spread, skew = float(extra["spread"]), float(extra.get("skew", 0.0))
        seed = int(extra.get("seed", 0))
    except (TypeError, ValueError) as e:
        raise ValueError(
            f"load format {LOAD_FORMAT}: bad model_loader_extra_config ({e})"
        ) from None
    if not (math.isfinite(spread) and spread > 0 and math.isfinite(skew) and skew >= 0):
        raise ValueError(f"load format {LOAD_FORMAT}: spread must be > 0 and skew >= 0, finite "
                         f"(got spread={spread}, skew={skew})")  # fmt: skip
    return {
        "spread": spread,
        "skew": skew,
        "seed": seed,
        "router": str(extra.get("router", "custom")),
    }


class LynxDummyLoader(DummyModelLoader):
    """DummyModelLoader, then `router_realism.draw_routers` before weight post-processing."""

    def __init__(self, load_config) -> None:
        # DummyModelLoader refuses any extra config; ours carries the router parameters.
        BaseModelLoader.__init__(self, load_config)
        self.router = parse_config(load_config.model_loader_extra_config)

    def load_weights(self, model, model_config) -> None:
        super().load_weights(model, model_config)
        zeroed = _zero_integer_params(model)
        r = self.router
        drawn = router_realism.draw_routers(model, r["spread"], r["skew"], r["seed"])
        LAST_DRAW.clear()
        LAST_DRAW.update(drawn, router=r["router"])
        logger.info("[lynx-bench] %s: %d MoE gates drawn (%s), %d norms set, %d biases zeroed, "
                    "%d integer tensors zeroed", LOAD_FORMAT, drawn["gates"],
                    router_realism.describe(r["spread"], r["skew"], r["router"]),
                    drawn["norms_set"], drawn["biases_zeroed"], zeroed)  # fmt: skip


def _zero_integer_params(model) -> int:
    """Zero the integer tensors vLLM's dummy init leaves as torch.empty on CUDA (packed 4-bit
    weights, e8m0 scales; vLLM zeroes them on ROCm only). Garbage there can hold NaN scales
    (e8m0 0xFF), whose NaN hidden states then reach the router, where a row with a non-finite
    logit is never remapped: a packed checkpoint format would then measure nothing. Zeroed MXFP4
    blocks decode to 0.0, so such experts add nothing; the routing under test is unaffected."""
    zeroed = 0
    for param in model.parameters():  # not buffers: integer buffers are maps vLLM fills itself
        if param.device.type != "meta" and not torch.is_floating_point(param) and param.numel():
            param.zero_()
            zeroed += 1
    return zeroed


def last_draw(worker: Any = None) -> dict[str, Any]:
    """What this process's last `lynx_dummy` load drew (for `collective_rpc`)."""
    return dict(LAST_DRAW)


# At import, once per process (a module runs once): vLLM would warn about a second registration.
register_model_loader(LOAD_FORMAT)(LynxDummyLoader)
