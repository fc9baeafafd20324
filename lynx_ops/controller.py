# SPDX-License-Identifier: Apache-2.0
"""Choose the policy's setting per decode step so that the step time holds a TPOT target.

The setting is one integer the op reads from a device scalar: the budget policy's K (the most
experts a step keeps) or the keep_k0 policy's k0 (the experts each row keeps). Smaller is more
aggressive for both, so one rule serves both; below, "K" stands for either.

Pure decision logic, no vLLM and no clock: it is fed one fact per decode step (the batch's row
count and the step's measured duration) and returns the K for the next step. Everything it does is
a function of that sequence, so one instance deciding for all tensor-parallel ranks, with its
answer delivered to every rank in the same step, keeps the ranks in agreement (docs/CONTROLLER.md
says where it runs and how K reaches the kernels; that wiring is not built yet).

The rule, least aggressive first:
* K walks a ladder of settings (`ladder`, largest K first, the policy's own setting or a
  no-op-sized K at the top); it moves one rung at a time;
* one rung more aggressive after `patience` consecutive steps whose smoothed duration exceeds the
  target, one rung less after `patience` consecutive steps below target * (1 - margin); between
  the two it stays (hysteresis: a load near the target does not oscillate);
* never below the accuracy floor for the step's batch size (`floors`: per batch-size bucket, the
  smallest K whose decode-phase NLL cost the frontier measured within the stated limit); a step
  whose bucket has a higher floor pulls K up at once.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any


class ControllerError(ValueError):
    """A controller setting that cannot work; the message names the field."""


@dataclasses.dataclass(frozen=True)
class ControllerConfig:
    target_ms: float
    # settings (budget K or keep_k0 k0), largest (least aggressive) first, strictly decreasing,
    # each >= 1
    ladder: tuple[int, ...]
    # (largest batch of the bucket, smallest K allowed there), batches ascending; batches above
    # the last bucket take the last floor. Empty: no floor beyond the ladder's end.
    floors: tuple[tuple[int, int], ...] = ()
    margin: float = 0.1
    patience: int = 8
    smoothing: float = 0.25  # weight of the newest step in the moving average

    def __post_init__(self) -> None:
        if not (isinstance(self.target_ms, (int, float)) and math.isfinite(self.target_ms)
                and self.target_ms > 0):  # fmt: skip
            raise ControllerError(f"target_ms={self.target_ms!r}: must be a finite number > 0")
        ladder = self.ladder
        if not ladder or any(
            not isinstance(k, int) or isinstance(k, bool) or k < 1 for k in ladder
        ):
            raise ControllerError(f"ladder={ladder!r}: must be a non-empty list of integers >= 1")
        if any(a <= b for a, b in zip(ladder, ladder[1:], strict=False)):
            raise ControllerError(f"ladder={ladder!r}: must be strictly decreasing (least "
                                  "aggressive K first)")  # fmt: skip
        batches = [b for b, _ in self.floors]
        if any(not isinstance(v, int) or isinstance(v, bool) or v < 1
               for pair in self.floors for v in pair):  # fmt: skip
            raise ControllerError(
                f"floors={self.floors!r}: batch sizes and K must be integers >= 1"
            )
        if any(a >= b for a, b in zip(batches, batches[1:], strict=False)):
            raise ControllerError(f"floors={self.floors!r}: batch sizes must be increasing")
        if any(k > ladder[0] for _, k in self.floors):
            raise ControllerError(f"floors={self.floors!r}: a floor above the ladder's top K "
                                  f"{ladder[0]} leaves no setting")  # fmt: skip
        if not 0 <= self.margin < 1:
            raise ControllerError(f"margin={self.margin!r}: must be in [0, 1)")
        if not isinstance(self.patience, int) or self.patience < 1:
            raise ControllerError(f"patience={self.patience!r}: must be an integer >= 1")
        if not 0 < self.smoothing <= 1:
            raise ControllerError(f"smoothing={self.smoothing!r}: must be in (0, 1]")

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> ControllerConfig:
        """From a policy file's JSON object; unknown fields are errors, not ignored."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ControllerError(f"unknown field(s) {unknown}; known: {sorted(known)}")
        if "target_ms" not in raw or "ladder" not in raw:
            raise ControllerError("target_ms and ladder are required")
        values = dict(raw)
        try:
            values["ladder"] = tuple(raw["ladder"])
            values["floors"] = tuple(tuple(pair) for pair in raw.get("floors", ()))
        except TypeError as e:
            raise ControllerError(f"ladder/floors: {e}") from None
        if any(len(pair) != 2 for pair in values["floors"]):
            raise ControllerError(f"floors={raw.get('floors')!r}: each entry is [batch, K]")
        return cls(**values)


def load_config(path: str | Path) -> ControllerConfig:
    """A controller file (a JSON object of ControllerConfig's fields); ControllerError names the
    file and what is wrong."""
    try:
        raw = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise ControllerError(f"{path}: cannot be read as JSON ({e})") from None
    if not isinstance(raw, dict):
        raise ControllerError(f"{path}: expected a JSON object")
    try:
        return ControllerConfig.from_dict(raw)
    except (ControllerError, TypeError) as e:
        raise ControllerError(f"{path}: {e}") from None


class TpotController:
    """The decision state; `update` once per decode step, in step order."""

    def __init__(self, config: ControllerConfig):
        self.config = config
        self.rung = 0
        self.average_ms: float | None = None
        self._over = self._under = 0
        # decode steps spent at each K (what the metrics export)
        self.steps_at = dict.fromkeys(config.ladder, 0)

    @property
    def budget(self) -> int:
        return self.config.ladder[self.rung]

    def deepest_rung(self, batch: int) -> int:
        """The most aggressive rung this batch size's accuracy floor allows."""
        floor = 1
        for largest, k in self.config.floors:
            floor = k
            if batch <= largest:
                break
        allowed = [i for i, k in enumerate(self.config.ladder) if k >= floor]
        return allowed[-1] if allowed else 0

    def update(self, batch: int, step_ms: float) -> int:
        """One decode step of `batch` rows took `step_ms`; returns K for the next step. A
        measurement that is not a finite number >= 0 is skipped (K and the average stay)."""
        cfg = self.config
        if isinstance(step_ms, (int, float)) and math.isfinite(step_ms) and step_ms >= 0:
            avg = self.average_ms
            avg = step_ms if avg is None else avg + cfg.smoothing * (step_ms - avg)
            self.average_ms = avg
            if avg > cfg.target_ms:
                self._over, self._under = self._over + 1, 0
            elif avg < cfg.target_ms * (1 - cfg.margin):
                self._over, self._under = 0, self._under + 1
            else:
                self._over = self._under = 0
            deepest = self.deepest_rung(batch)
            if self._over >= cfg.patience and self.rung < deepest:
                self.rung += 1
                self._over = 0
            elif self._under >= cfg.patience and self.rung > 0:
                self.rung -= 1
                self._under = 0
        self.rung = min(self.rung, self.deepest_rung(batch))
        self.steps_at[self.budget] += 1
        return self.budget

    def snapshot(self) -> dict[str, Any]:
        """What the startup line and metrics report."""
        return {"target_ms": self.config.target_ms, "budget": self.budget,
                "average_ms": self.average_ms, "steps_at": dict(self.steps_at)}  # fmt: skip
