# SPDX-License-Identifier: Apache-2.0
"""vLLM plugin entry point (`vllm.general_plugins` -> `lynx = lynx_ops.plugin:register`).

vLLM calls `register()` once per process (engine and every worker) before the model is built.
Unless VLLM_LYNX_ENABLED=1 it returns at once: nothing imported, nothing patched, vLLM stays stock.
"""

from __future__ import annotations

import logging
import os
import threading

logger = logging.getLogger("lynx_ops")
_LOCK = threading.Lock()
_STATE = {"installed": False, "refused": None}


def is_installed() -> bool:
    """True in a process where the plugin has hooked vLLM (VLLM_LYNX_ENABLED=1 and vLLM
    supported); the public way for tools to ask."""
    return bool(_STATE["installed"])


def register() -> None:
    from lynx_ops import envs

    if not envs.VLLM_LYNX_ENABLED:
        return
    with _LOCK:
        if _STATE["installed"] or _STATE["refused"]:
            return  # re-entrant: vLLM may call plugins more than once per process
        _install()


def _install() -> None:
    from vllm.platforms import current_platform

    from lynx_ops.integration import compat

    on_cpu = current_platform.is_cpu()
    missing = compat.problems(on_cpu)
    if missing:
        _STATE["refused"] = "; ".join(missing)
        logger.error(
            "[lynx] VLLM_LYNX_ENABLED=1 but Lynx cannot hook this vLLM, so it stays stock: %s",
            _STATE["refused"],
        )
        return
    from lynx_ops import envs as lynx_envs

    lynx_envs.validate()
    _share_vllm_logging()
    _register_env_names()
    # Validate the policy file now, in every process, so a bad file fails at startup.
    from lynx_ops import envs
    from lynx_ops.registry import load_policy_file

    if envs.VLLM_LYNX_CONFIG_FILE:
        load_policy_file(envs.VLLM_LYNX_CONFIG_FILE)

    from vllm.model_executor.custom_op import op_registry_oot
    from vllm.model_executor.layers.fused_moe.runner.moe_runner import MoERunner

    from lynx_ops.integration.runner import LynxMoERunner

    if op_registry_oot.get("MoERunner") is not LynxMoERunner:
        if "MoERunner" in op_registry_oot:
            logger.error(
                "[lynx] another plugin already replaced MoERunner (%s); Lynx stays stock",
                op_registry_oot["MoERunner"],
            )
            _STATE["refused"] = "MoERunner already replaced"
            return
        MoERunner.register_oot(LynxMoERunner)
    if on_cpu:
        from lynx_ops.integration import cpu_routing

        cpu_routing.install()
    if lynx_envs.VLLM_LYNX_CONTROLLER_FILE:
        from lynx_ops.integration import budget_sync

        budget_sync.install()  # each rank applies the scheduler's K before its step's forward
    if lynx_envs.VLLM_LYNX_METRICS_INTERVAL > 0:
        from lynx_ops.integration import metrics

        metrics.metrics_dir()  # made here, in the first process; later processes inherit it
        if not metrics.install_stat_logger():
            logger.warning("[lynx] this vLLM has no stat-logger hook: no Lynx metrics on /metrics "
                           "(the periodic '[lynx] stats' log line remains)")  # fmt: skip
    _STATE["installed"] = True
    logger.info("[lynx] plugin installed (pid %d, vLLM %s)", os.getpid(), compat.vllm_version())


def _share_vllm_logging() -> None:
    """Lynx's lines go where vLLM's go, in vLLM's format and level."""
    vllm_logger = logging.getLogger("vllm")
    if not logger.handlers and vllm_logger.handlers:
        for handler in vllm_logger.handlers:
            logger.addHandler(handler)
        logger.setLevel(vllm_logger.level or logging.INFO)
        logger.propagate = False


def _runtime_only() -> str:
    return "read at run time, not a compile factor"


def _register_env_names() -> None:
    """Tell vLLM about our variables: no unknown-variable warning, and they enter the compile-cache
    key (the CPU backend traces the policy into the compiled graph), so a cached stock graph is
    never reused with Lynx on, nor one with another policy file."""
    import hashlib

    import vllm.envs as vllm_envs

    from lynx_ops import __version__, envs

    def config_file_factor() -> str | None:
        path = envs.VLLM_LYNX_CONFIG_FILE
        if not path:
            return None
        try:
            with open(path, "rb") as f:
                return f"{path}#{hashlib.sha256(f.read()).hexdigest()[:16]}"
        except OSError:
            return path

    # What changes the traced graph enters the key with its value; settings read only at run
    # time (log and metrics intervals, the controller's file: the controller moves a device
    # scalar, not the graph) are registered with a constant, so that changing them does not
    # recompile. Every name is registered: vLLM warns about any unknown VLLM_* variable.
    factors = {
        "VLLM_LYNX_ENABLED": lambda: f"{envs.VLLM_LYNX_ENABLED} lynx_ops {__version__}",
        "VLLM_LYNX_CONFIG_FILE": config_file_factor,
        "VLLM_LYNX_CEILING_EXPERTS": lambda: envs.VLLM_LYNX_CEILING_EXPERTS,
    }
    for name in envs.ENVIRONMENT_VARIABLES:
        vllm_envs.environment_variables.setdefault(name, factors.get(name, _runtime_only))
