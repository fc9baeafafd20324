# SPDX-License-Identifier: Apache-2.0
"""The worker half of the TPOT controller: every rank applies the K its step's SchedulerOutput
carries.

Lynx's scheduler (scheduler.py) decides K once per step in the engine core and attaches it to the
SchedulerOutput (`lynx_budget`). vLLM hands that one object to every worker (in-process, or
pickled through its broadcast queue to each rank's process), so each tensor- or pipeline-parallel
rank writes the same K into its layers' budget scalars before that step's forward: the ranks agree
with no collective added to the step. The write is a device fill on the stream the forward runs
on, outside any captured graph, and happens only when K changes.

`install()` (the plugin, in every process, when VLLM_LYNX_CONTROLLER_FILE is set) wraps vLLM's
worker: `load_model` checks that the engine runs Lynx's scheduler and that this rank's covered
layers run a budget policy, so a controller with nothing to turn, or no scheduler to turn it,
stops the engine at startup; `execute_model` applies K.
"""

from __future__ import annotations

import logging

logger = logging.getLogger("lynx_ops")
ATTR = "lynx_budget"
_APPLIED: dict[str, int | None] = {"k": None}


class ControllerSetupError(RuntimeError):
    """The controller cannot run in this engine; the message says why and what to change."""


def budget_scalars() -> list:
    """The budget scalars of every layer Lynx covers in this process (this rank's layers)."""
    from lynx_ops.integration.layer_state import LAYERS

    return [state.budget for state in LAYERS.values() if state.budget is not None]


def check_layers() -> int:
    """Startup: this rank's covered layers run a budget policy; their count."""
    from lynx_ops.integration.layer_state import LAYERS

    scalars = budget_scalars()
    if not scalars:
        kinds = sorted({state.policy.kind for state in LAYERS.values()})
        raise ControllerSetupError(
            "the TPOT controller (VLLM_LYNX_CONTROLLER_FILE) turns the budget policy's K, but "
            + (f"the covered layers run {kinds}" if kinds else "Lynx covers no layer here")
            + "; give the model a budget policy (VLLM_LYNX_CONFIG_FILE, docs/MODELS.md)"
        )  # fmt: skip
    return len(scalars)


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
    """Write the step's K into this rank's budget scalars, where it changed."""
    k = getattr(scheduler_output, ATTR, None)
    if k is None or k == _APPLIED["k"]:
        return
    for scalar in budget_scalars():
        scalar.fill_(k)
    _APPLIED["k"] = k


def applied() -> int | None:
    """The K this rank last applied (tests and the worker extension read it)."""
    return _APPLIED["k"]


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
        n = check_layers()
        _APPLIED["k"] = None  # this model's scalars hold its policy's K: the first step writes
        logger.info("[lynx] TPOT controller: this rank applies each step's K to %d layers' "
                    "budget", n)  # fmt: skip
        return out

    lynx_execute_model._lynx = lynx_load_model._lynx = True
    WorkerWrapperBase.execute_model = lynx_execute_model
    Worker.load_model = lynx_load_model
