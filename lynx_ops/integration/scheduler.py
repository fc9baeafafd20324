# SPDX-License-Identifier: Apache-2.0
"""Lynx's scheduler: vLLM's own, plus the TPOT controller (lynx_ops/controller.py) that sets the
policy's setting (a budget's K, or keep_k0's k0; "K" below) between decode steps.

    VLLM_LYNX_ENABLED=1 VLLM_LYNX_CONFIG_FILE=budget.json VLLM_LYNX_CONTROLLER_FILE=tpot.json \\
        vllm serve MODEL --scheduler-cls lynx_ops.integration.scheduler.LynxAsyncScheduler

(`LynxScheduler` for engines without async scheduling.) vLLM's scheduler is pluggable
(`SchedulerConfig.scheduler_cls`); this one changes nothing about what is scheduled. It times
vLLM's step period (the interval between consecutive `update_from_output` calls of pure-decode
steps, as the engine core sees them), feeds it to the controller with the step's row count, and
attaches the chosen K to every SchedulerOutput it schedules. Each worker rank writes that K into
its layers' setting scalars before the step's forward (budget_sync.py), which the kernel reads on
the device, so captured CUDA graphs replay with the new K and every tensor-parallel rank runs the
same K in the same step. Data parallelism (one scheduler per rank) is refused at startup.
"""

from __future__ import annotations

import logging
import time

from vllm.v1.core.sched.async_scheduler import AsyncScheduler
from vllm.v1.core.sched.scheduler import Scheduler

from lynx_ops import envs
from lynx_ops.controller import ControllerConfig, ControllerError, TpotController, load_config
from lynx_ops.integration.budget_sync import ATTR, ControllerSetupError

logger = logging.getLogger("lynx_ops")
SUMMARY_INTERVAL_S = 60.0


def _load_config() -> ControllerConfig:
    path = envs.VLLM_LYNX_CONTROLLER_FILE
    if not path:
        raise ControllerSetupError("Lynx's scheduler needs VLLM_LYNX_CONTROLLER_FILE (a JSON "
                                   "file: target_ms, ladder, ...; docs/CONTROLLER.md)")  # fmt: skip
    try:
        return load_config(path)
    except ControllerError as e:
        raise ControllerSetupError(f"VLLM_LYNX_CONTROLLER_FILE={e}") from None


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
        from lynx_ops import plugin

        if not plugin.is_installed():  # e.g. another vLLM release: the workers stay stock
            raise ControllerSetupError("Lynx's scheduler was given but the Lynx plugin did not "
                                       "install in this vLLM (see its log line above)")  # fmt: skip
        par = self.vllm_config.parallel_config
        if par.data_parallel_size != 1:  # one scheduler, and one controller, per DP rank
            raise ControllerSetupError(
                f"the TPOT controller needs one scheduler for the whole engine; got "
                f"data_parallel_size={par.data_parallel_size} (docs/CONTROLLER.md)")  # fmt: skip
        self._lynx = TpotController(_load_config())
        self._lynx_last: float | None = None  # end of the previous decode step
        self._lynx_logged = self._lynx_published = time.monotonic()
        self._lynx_last_decode = float("-inf")  # when the last decode step ended
        self._lynx_publish()
        cfg = self._lynx.config
        logger.info("[lynx] TPOT controller: target %.3g ms, ladder %s, floors %s; tensor "
                    "parallel ranks %d", cfg.target_ms, list(cfg.ladder),
                    [list(f) for f in cfg.floors] or "none", par.tensor_parallel_size)  # fmt: skip

    def _lynx_publish(self) -> None:
        """The controller's snapshot for /metrics (metrics.py), where the plugin exports them."""
        if envs.VLLM_LYNX_METRICS_INTERVAL <= 0:
            return
        from lynx_ops.integration import metrics

        try:
            metrics.publish_controller(self._lynx.snapshot())
        except OSError as e:  # telemetry never stops the scheduler
            logger.warning("[lynx] TPOT controller: metrics file not written: %s", e)

    def schedule(self, *args, **kwargs):
        output = super().schedule(*args, **kwargs)
        setattr(output, ATTR, self._lynx.budget)  # every rank applies it (budget_sync.py)
        return output

    def _lynx_step_done(self, output) -> None:
        now = time.monotonic()
        if not _is_decode(output):
            self._lynx_last = None  # a prefill or mixed step: the next interval is not a decode's
            return
        if self._lynx_last is not None:
            self._lynx.update(len(output.num_scheduled_tokens), (now - self._lynx_last) * 1e3)
        self._lynx_last = self._lynx_last_decode = now
        if 0 < envs.VLLM_LYNX_METRICS_INTERVAL <= now - self._lynx_published:
            self._lynx_published = now
            self._lynx_publish()
        if now - self._lynx_logged >= SUMMARY_INTERVAL_S:
            self._lynx_logged = now
            snap = self._lynx.snapshot()
            logger.info("[lynx] TPOT controller: setting %d, step %.3g ms (average), decode "
                        "steps at each setting %s", snap["budget"], snap["average_ms"] or 0.0,
                        snap["steps_at"])  # fmt: skip

    def update_from_output(self, scheduler_output, model_runner_output):
        outputs = super().update_from_output(scheduler_output, model_runner_output)
        self._lynx_step_done(scheduler_output)
        if self._lynx_published < self._lynx_last_decode and not self.has_unfinished_requests():
            # The engine goes idle: publish now, so /metrics holds every step of the work just
            # finished (a benchmark reads the settings each run used from the difference), not
            # the state of up to one metrics interval before it.
            self._lynx_published = time.monotonic()
            self._lynx_publish()
        return outputs


class LynxScheduler(_Controlled, Scheduler):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._lynx_setup()


class LynxAsyncScheduler(_Controlled, AsyncScheduler):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._lynx_setup()
