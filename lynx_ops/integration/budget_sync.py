# SPDX-License-Identifier: Apache-2.0
"""The worker half of the TPOT controller: every rank applies the setting its step's
SchedulerOutput carries (a budget policy's K, or a keep_k0 policy's k0).

Lynx's scheduler (scheduler.py) decides the setting once per step in the engine core and attaches
it to the SchedulerOutput (`lynx_budget`, named for the first policy it turned). vLLM hands that
one object to every worker (in-process, or pickled through its broadcast queue to each rank's
process), so each tensor- or pipeline-parallel rank writes the same value into its layers' setting
scalars before that step's forward: the ranks agree with no collective added to the step. The
write is a device fill on the stream the forward runs on, outside any captured graph, and happens
only when the value changes.

`install()` (the plugin, in every process, when VLLM_LYNX_CONTROLLER_FILE is set) wraps vLLM's
worker: `load_model` checks that the engine runs Lynx's scheduler, that this rank's covered layers
all run one policy kind with a setting scalar (budget or keep_k0), and that the controller's
ladder fits it (k0 at most the router's k), so a controller with nothing to turn, or no scheduler
to turn it, stops the engine at startup; `execute_model` applies the value.
"""

from __future__ import annotations

import logging

logger = logging.getLogger("lynx_ops")
ATTR = "lynx_budget"
_APPLIED: dict[str, int | None] = {"k": None}


class ControllerSetupError(RuntimeError):
    """The controller cannot run in this engine; the message says why and what to change."""


def setting_scalars() -> list:
    """The setting scalars of every layer Lynx covers in this process (this rank's layers)."""
    from lynx_ops.integration.layer_state import LAYERS

    return [state.knob for state in LAYERS.values() if state.knob is not None]


def check_layers(ladder: tuple[int, ...] | None = None) -> tuple[str, int]:
    """Startup: this rank's covered layers all run one policy kind the controller can turn
    (budget, keep_k0) and `ladder` (the controller's settings) fits it; (that kind, layers)."""
    from lynx_ops.integration.layer_state import LAYERS

    states = [state for state in LAYERS.values() if state.knob is not None]
    if not states:
        kinds = sorted({state.policy.kind for state in LAYERS.values()})
        raise ControllerSetupError(
            "the TPOT controller (VLLM_LYNX_CONTROLLER_FILE) turns a budget policy's K or a "
            "keep_k0 policy's k0, but "
            + (f"the covered layers run {kinds}" if kinds else "Lynx covers no layer here")
            + "; give the model such a policy (VLLM_LYNX_CONFIG_FILE, docs/MODELS.md)"
        )  # fmt: skip
    kinds = sorted({state.policy.kind for state in states})
    if len(kinds) > 1:  # one ladder of numbers cannot mean a K here and a k0 there
        raise ControllerSetupError(f"the TPOT controller turns one setting, but the covered "
                                   f"layers run {kinds}: give them one of the two")  # fmt: skip
    if kinds == ["keep_k0"] and ladder:
        top_k = min(state.facts.top_k for state in states)
        if ladder[0] > top_k:
            raise ControllerSetupError(
                f"the controller's ladder {list(ladder)} turns keep_k0's k0, which is at most the "
                f"router's k={top_k}: start the ladder at {top_k} (k0 = k keeps the router's "
                "choice)")  # fmt: skip
    return kinds[0], len(states)


def check_scheduler(vllm_config) -> None:
    """Startup: the engine runs Lynx's scheduler, the only thing that sends a K."""
    cls = vllm_config.scheduler_config.scheduler_cls
    if cls is None:
        name = "vLLM's own (no --scheduler-cls)"
    else:
        name = cls if isinstance(cls, str) else f"{cls.__module__}.{cls.__qualname__}"
    if not str(name).startswith("lynx_ops.integration.scheduler."):
        raise ControllerSetupError(
            f"VLLM_LYNX_CONTROLLER_FILE is set but the engine's scheduler is {name}: serve with "
            "--scheduler-cls lynx_ops.integration.scheduler.LynxAsyncScheduler (LynxScheduler "
            "without async scheduling), or unset the controller file (docs/CONTROLLER.md)")  # fmt: skip


def apply(scheduler_output) -> None:
    """Write the step's setting into this rank's setting scalars, where it changed."""
    k = getattr(scheduler_output, ATTR, None)
    if k is None or k == _APPLIED["k"]:
        return
    for scalar in setting_scalars():
        scalar.fill_(k)
    _APPLIED["k"] = k


def applied() -> int | None:
    """The setting this rank last applied (tests and the worker extension read it)."""
    return _APPLIED["k"]


def _ladder() -> tuple[int, ...] | None:
    """The controller file's ladder; a bad file is the scheduler's to report (it starts first)."""
    from lynx_ops import envs
    from lynx_ops.controller import ControllerError, load_config

    try:
        return load_config(envs.VLLM_LYNX_CONTROLLER_FILE).ladder
    except ControllerError:
        return None


def install() -> None:
    from vllm.v1.worker.gpu_worker import Worker
    from vllm.v1.worker.worker_base import WorkerWrapperBase

    if getattr(WorkerWrapperBase.execute_model, "_lynx", False):
        return
    execute_model, load_model = WorkerWrapperBase.execute_model, Worker.load_model

    def lynx_execute_model(self, scheduler_output, *args, **kwargs):
        apply(scheduler_output)
        return execute_model(self, scheduler_output, *args, **kwargs)

    def lynx_load_model(self, *args, **kwargs):
        check_scheduler(self.vllm_config)
        out = load_model(self, *args, **kwargs)
        kind, n = check_layers(_ladder())
        _APPLIED["k"] = None  # this model's scalars hold its policy's value: the first step writes
        logger.info("[lynx] TPOT controller: this rank applies each step's %s to %d layers",
                    "k0" if kind == "keep_k0" else "K", n)  # fmt: skip
        return out

    lynx_execute_model._lynx = lynx_load_model._lynx = True
    WorkerWrapperBase.execute_model = lynx_execute_model
    Worker.load_model = lynx_load_model
