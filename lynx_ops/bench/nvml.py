# SPDX-License-Identifier: Apache-2.0
"""GPU telemetry during a measured run: NVML (nvidia-ml-py) sampled in a side thread.

Memory-bandwidth utilisation is NVML's memory utilisation (percent of the sample period in which
device memory was read or written), which is what an MoE decode step that streams expert weights
saturates. Energy comes from the board's cumulative energy counter where it has one (Volta and
later), else from integrating power over the samples.
"""

from __future__ import annotations

import os
import statistics
import threading
import time
from typing import Any


class NvmlSampler:
    def __init__(self, interval_s: float = 0.02) -> None:
        self.interval_s = interval_s
        self.available = False
        self.reason = ""
        self._samples: list[tuple[float, float, float, float]] = []
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        try:
            import pynvml

            pynvml.nvmlInit()
            self._nvml = pynvml
            self._handle = pynvml.nvmlDeviceGetHandleByIndex(_physical_index())
            self.available = True
        except Exception as e:  # no driver, no GPU, or no nvidia-ml-py: telemetry is optional
            self.reason = f"NVML unavailable: {e}"

    def _energy_mj(self) -> float | None:
        try:
            return float(self._nvml.nvmlDeviceGetTotalEnergyConsumption(self._handle))
        except Exception:
            return None

    def _run(self) -> None:
        nv, h = self._nvml, self._handle
        while not self._stop.is_set():
            try:
                util = nv.nvmlDeviceGetUtilizationRates(h)
                self._samples.append((
                    time.perf_counter(), float(util.memory),
                    float(nv.nvmlDeviceGetClockInfo(h, nv.NVML_CLOCK_SM)),
                    nv.nvmlDeviceGetPowerUsage(h) / 1000.0,
                ))  # fmt: skip
            except Exception:
                pass
            self._stop.wait(self.interval_s)

    def start(self) -> None:
        if not self.available:
            return
        self._samples.clear()
        self._stop.clear()
        self._energy0 = self._energy_mj()
        self._t0 = time.perf_counter()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def stop(self) -> dict[str, Any]:
        """Summary of the samples since start(): means, energy in joules, sample count."""
        if not self.available or self._thread is None:
            return {"nvml": self.reason or "not started"}
        self._stop.set()
        self._thread.join()
        seconds = time.perf_counter() - self._t0
        energy1 = self._energy_mj()
        s = self._samples
        out: dict[str, Any] = {"nvml_samples": len(s), "seconds": seconds}
        if s:
            out["mem_bw_util_pct"] = statistics.mean(x[1] for x in s)
            out["sm_clock_mhz"] = statistics.mean(x[2] for x in s)
            out["power_w"] = statistics.mean(x[3] for x in s)
        if self._energy0 is not None and energy1 is not None:
            out["energy_j"] = (energy1 - self._energy0) / 1000.0
        elif s:
            out["energy_j"] = out["power_w"] * seconds
        return out


def _physical_index() -> int:
    """NVML counts physical GPUs; CUDA_VISIBLE_DEVICES may renumber them."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")[0].strip()
    return int(visible) if visible.isdigit() else 0
