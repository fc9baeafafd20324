# SPDX-License-Identifier: Apache-2.0
"""Version guard: the vLLM release Lynx was built against and the hook points it relies on."""

from __future__ import annotations

import importlib

SUPPORTED_VLLM = ("0.26",)  # release series whose hook points are verified


def vllm_version() -> str:
    import vllm

    return getattr(vllm, "__version__", "unknown")


def problems(on_cpu: bool) -> list[str]:
    """What is missing for Lynx on this vLLM; empty when everything it hooks is in place."""
    found: list[str] = []
    version = vllm_version()
    if not version.startswith(SUPPORTED_VLLM):
        found.append(f"vLLM {version} is not a supported release ({', '.join(SUPPORTED_VLLM)}.x)")
    checks = [
        ("vllm.model_executor.layers.fused_moe.runner.moe_runner", "MoERunner", "register_oot"),
        # The router method wrap_router replaces per instance, and the one that calls it.
        (
            "vllm.model_executor.layers.fused_moe.router.base_router",
            "BaseRouter",
            "_compute_routing",
        ),
        (
            "vllm.model_executor.layers.fused_moe.router.base_router",
            "BaseRouter",
            "_select_experts",
        ),
        # The stat-logger factory list metrics.install_stat_logger extends (when metrics are on).
        ("vllm.v1.metrics.loggers", "load_stat_logger_plugin_factories", None),
        ("vllm.forward_context", "get_forward_context", None),
        ("vllm.config", "CUDAGraphMode", "separate_routine"),
    ]
    if on_cpu:
        checks.append(
            ("vllm.model_executor.layers.fused_moe.cpu_fused_moe", "select_experts", None)
        )
    for module, name, attr in checks:
        try:
            obj = getattr(importlib.import_module(module), name)
            if attr is not None:
                getattr(obj, attr)
        except (ImportError, AttributeError) as e:
            found.append(f"{module}.{name}{'.' + attr if attr else ''} missing ({e})")
    return found
