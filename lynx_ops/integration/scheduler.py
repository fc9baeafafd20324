# SPDX-License-Identifier: Apache-2.0
"""Lynx's scheduler: vLLM's own, plus the TPOT controller (lynx_ops/controller.py) that sets the
budget policy's K between decode steps.

    VLLM_LYNX_ENABLED=1 VLLM_LYNX_CONFIG_FILE=budget.json VLLM_LYNX_CONTROLLER_FILE=tpot.json \\
        vllm serve MODEL --scheduler-cls lynx_ops.integration.scheduler.LynxAsyncScheduler

(`LynxScheduler` for engines without async scheduling.) vLLM's scheduler is pluggable
(`SchedulerConfig.scheduler_cls`); this one changes nothing about what is scheduled. It times
vLLM's step period (the interval between consecutive `update_from_output` calls of pure-decode
steps, as the engine core sees them), feeds it to the controller with the step's row count, and
writes the chosen K into every covered layer's budget scalar, which the kernel reads on the device,
so captured CUDA graphs replay with the new K. The scalars live in the worker; this first version
writes them in-process, so it needs the single-worker executor (one GPU, no tensor, pipeline or
data parallelism) and refuses anything else at startup. With more ranks one decision must reach
every rank in the same step (docs/CONTROLLER.md).
"""

from __future__ import annotations

import logging
import time

from vllm.v1.core.sched.async_scheduler import AsyncScheduler
from vllm.v1.core.sched.scheduler import Scheduler

from lynx_ops import envs
from lynx_ops.controller import ControllerConfig, ControllerError, TpotController, load_config

logger = logging.getLogger("lynx_ops")
SUMMARY_INTERVAL_S = 60.0


class ControllerSetupError(RuntimeError):
    """The controller cannot run in this engine; the message says why and what to change."""


def _load_config() -> ControllerConfig:
    path = envs.VLLM_LYNX_CONTROLLER_FILE
    if not path:
        raise ControllerSetupError("Lynx's scheduler needs VLLM_LYNX_CONTROLLER_FILE (a JSON "
                                   "file: target_ms, ladder, ...; docs/CONTROLLER.md)")  # fmt: skip
    try:
        return load_config(path)
    except ControllerError as e:
        raise ControllerSetupError(f"VLLM_LYNX_CONTROLLER_FILE={e}") from None


def _budget_scalars() -> list:
    """The budget scalars of every layer Lynx covers in this process (the single worker)."""
    from lynx_ops.integration.layer_state import LAYERS

    scalars = [state.budget for state in LAYERS.values() if state.budget is not None]
    if not scalars:
        kinds = sorted({state.policy.kind for state in LAYERS.values()})
        raise ControllerSetupError(
            "the TPOT controller turns the budget policy's K, but "
            + (f"the covered layers run {kinds}" if kinds else "Lynx covers no layer in this "
               "process (is VLLM_LYNX_ENABLED=1, and is the executor the single-worker one?)")
            + "; give the model a budget policy (VLLM_LYNX_CONFIG_FILE, docs/MODELS.md)"
        )  # fmt: skip
    return scalars


def _is_decode(output) -> bool:
    """Every scheduled request brings one token plus its speculative ones: a uniform decode."""
    if output.scheduled_new_reqs or not output.num_scheduled_tokens:
        return False
    spec = output.scheduled_spec_decode_tokens
    return all(n <= 1 + len(spec.get(r, ())) for r, n in output.num_scheduled_tokens.items())


class _Controlled:
    """The controller around a vLLM scheduler (a mixin for Scheduler and AsyncScheduler)."""

    def _lynx_setup(self) -> None:
        if not envs.VLLM_LYNX_ENABLED:
            raise ControllerSetupError("Lynx's scheduler was given but VLLM_LYNX_ENABLED is not "
                                       "set: drop --scheduler-cls or enable Lynx")  # fmt: skip
        par = self.vllm_config.parallel_config
        sizes = {"tensor_parallel_size": par.tensor_parallel_size,
                 "pipeline_parallel_size": par.pipeline_parallel_size,
                 "data_parallel_size": par.data_parallel_size}  # fmt: skip
        if any(v != 1 for v in sizes.values()):
            raise ControllerSetupError(f"the TPOT controller runs with one worker for now; got "
                                       f"{sizes} (docs/CONTROLLER.md)")  # fmt: skip
        self._lynx = TpotController(_load_config())
        self._lynx_scalars = _budget_scalars()
        self._lynx_last: float | None = None  # end of the previous decode step
        self._lynx_logged = time.monotonic()
        self._lynx_apply(self._lynx.budget)
        cfg = self._lynx.config
        logger.info("[lynx] TPOT controller: target %.3g ms, K ladder %s, floors %s, on %d "
                    "layers' budget", cfg.target_ms, list(cfg.ladder),
                    [list(f) for f in cfg.floors] or "none", len(self._lynx_scalars))  # fmt: skip

    def _lynx_apply(self, k: int) -> None:
        for scalar in self._lynx_scalars:
            scalar.fill_(k)

    def _lynx_step_done(self, output) -> None:
        now = time.monotonic()
        if not _is_decode(output):
            self._lynx_last = None  # a prefill or mixed step: the next interval is not a decode's
            return
        if self._lynx_last is not None:
            before = self._lynx.budget
            k = self._lynx.update(len(output.num_scheduled_tokens), (now - self._lynx_last) * 1e3)
            if k != before:
                self._lynx_apply(k)
        self._lynx_last = now
        if now - self._lynx_logged >= SUMMARY_INTERVAL_S:
            self._lynx_logged = now
            snap = self._lynx.snapshot()
            logger.info("[lynx] TPOT controller: K=%d, step %.3g ms (average), decode steps at "
                        "each K %s", snap["budget"], snap["average_ms"] or 0.0,
                        snap["steps_at"])  # fmt: skip

    def update_from_output(self, scheduler_output, model_runner_output):
        outputs = super().update_from_output(scheduler_output, model_runner_output)
        self._lynx_step_done(scheduler_output)
        return outputs


class LynxScheduler(_Controlled, Scheduler):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._lynx_setup()


class LynxAsyncScheduler(_Controlled, AsyncScheduler):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._lynx_setup()
