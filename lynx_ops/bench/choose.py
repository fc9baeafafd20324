# SPDX-License-Identifier: Apache-2.0
"""`lynx-bench choose`: a policy file from a frontier, by one stated rule.

The rule, per batch size the frontier measured: among its settings whose mean decode-phase NLL
change over the window sets is at most `max_dnll_pct` (paired against stock on the same windows),
take the one with the fewest distinct experts per MoE layer after the remap; ties go to the smaller
NLL change, then to the order of the frontier's rows. Where no setting qualifies, the batch size
keeps the vanilla routing (keep_k0 with k0 = k; the op still runs).

The chosen settings become one policy-file entry for the checkpoint's `model_type`: the largest
batch size's setting as the entry's own fields (it also serves larger batches), the others as
`by_batch` buckets (`max_batch` = the measured batch size). Batches smaller than the smallest
measured one take its setting, although a setting costs more NLL at smaller batches (the frontier
shows it growing as B shrinks): measure the batch sizes you serve.

With `--controller-out`, the same limit also gives the TPOT controller's accuracy floors for a
keep_k0 or budget ladder (controller_floors), written as a controller file.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from lynx_ops.bench.frontier import file_value, parse_setting
from lynx_ops.registry import PolicyError, load_policy_file
from lynx_ops.registry.policy import BATCH_FIELDS, Policy


def read_frontier(path: Path) -> list[dict[str, Any]]:
    """The rows of a frontier.csv (`lynx-bench frontier`), numbers parsed."""
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError as e:
        raise SystemExit(f"choose: cannot read {path} ({e})") from None
    need = {"setting", "batch", "dnll_pct", "experts_before", "experts_after"}
    if not rows or not need <= set(rows[0]):
        raise SystemExit(f"choose: {path} is not a frontier.csv (needs columns {sorted(need)})")
    for r in rows:
        r["batch"] = int(r["batch"])
        for key in ("dnll_pct", "experts_before", "experts_after"):
            r[key] = float(r[key])
    return rows


def read_frontiers(paths: list[Path]) -> list[dict[str, Any]]:
    """The rows of several frontier.csv files of one model, in the order given. Each run pairs
    its settings against its own stock engine on the same windows (the tool's windows are
    deterministic), so their NLL changes compare; files of different models are refused."""
    rows = [r for path in paths for r in read_frontier(path)]
    models = sorted({r.get("model", "") for r in rows})
    if len(models) > 1:
        raise SystemExit(f"choose: the frontiers measured different models ({', '.join(models)}); "
                         "pool runs of one model only")  # fmt: skip
    return rows


def choose(rows: list[dict[str, Any]], max_dnll_pct: float) -> dict[int, dict[str, Any] | None]:
    """Batch size -> the chosen row (None: no setting within the limit)."""
    chosen: dict[int, dict[str, Any] | None] = {}
    for batch in sorted({r["batch"] for r in rows}):
        ok = [(r["experts_after"], r["dnll_pct"], i, r) for i, r in enumerate(rows)
              if r["batch"] == batch and r["dnll_pct"] <= max_dnll_pct]  # fmt: skip
        chosen[batch] = min(ok, key=lambda t: t[:3])[3] if ok else None
    return chosen


# The policy kinds the TPOT controller turns, and the field it turns (docs/CONTROLLER.md)
CONTROLLED = {"keep_k0": "k0", "budget": "budget"}


def controller_floors(rows: list[dict[str, Any]], kind: str, max_dnll_pct: float,
                      top: int) -> list[list[int]]:  # fmt: skip
    """The TPOT controller's accuracy floors by the same limit: per measured batch size
    (ascending), [batch, floor]. The floor is the smallest value of `kind`'s field such that
    every setting of `kind` and that field alone the frontier measured at that batch, from the
    largest value down to it, is within the limit; `top` (no room) where the largest is not.
    A controller may then take any ladder value at or above the floor: values between measured
    ones (k0 = 7 between 6 and 8, say) are assumed to cost no more than the measured value below
    them, as larger k0 or K is less aggressive."""
    field = CONTROLLED[kind]
    # (batch, value) -> its NLL change; a repeated setting (pooled runs) counts with its worst
    measured: dict[int, dict[int, float]] = {r["batch"]: {} for r in rows}
    for r in rows:
        fields = parse_setting(r["setting"])
        if set(fields) == {"kind", field} and fields["kind"] == kind:
            at = measured[r["batch"]]
            value = int(fields[field])
            at[value] = max(at.get(value, r["dnll_pct"]), r["dnll_pct"])
    floors = []
    for batch in sorted(measured):
        floor = top
        for value in sorted(measured[batch], reverse=True):
            if measured[batch][value] > max_dnll_pct:
                break
            floor = min(floor, value)
        floors.append([batch, floor])
    return floors


def write_controller(config: dict[str, Any], path: Path) -> None:
    """Write a controller file and load it back through the controller's own checks."""
    from lynx_ops.controller import ControllerError, load_config

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(config) + "\n")
    try:
        load_config(path)
    except ControllerError as e:
        raise SystemExit(
            f"choose: the controller file written to {path} does not load: {e}"
        ) from None


def _setting(row: dict[str, Any] | None) -> dict[str, Any]:
    # no setting within the limit: vanilla routing, without the op's own time
    return parse_setting(row["setting"]) if row else {"kind": "off"}


def policy_entry(chosen: dict[int, dict[str, Any] | None], model_type: str,
                 default: Policy) -> dict[str, Any]:  # fmt: skip
    """One policy-file entry: the largest batch's setting as the entry's fields, smaller batches as
    by_batch buckets. A bucket inherits the entry's fields, so it restates every field the entry
    sets and its own setting does not at the family default (`default`), which is what the
    frontier measured that setting with."""
    batches = sorted(chosen)
    top = _setting(chosen[batches[-1]])
    entry: dict[str, Any] = {"model_type": model_type, **top}
    buckets = []
    for batch in batches[:-1]:
        own = _setting(chosen[batch])
        restated = {f: file_value(getattr(default, f)) for f in top if f in BATCH_FIELDS
                    and f not in own}  # fmt: skip
        buckets.append({"max_batch": batch, **own, **restated})
    if buckets:
        entry["by_batch"] = buckets
    return entry


def write_policy(entry: dict, path: Path) -> None:
    """Write {"policies": [entry]} and load it back through the registry's own checks."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"policies": [entry]}, indent=1) + "\n")
    try:
        load_policy_file(path)
    except PolicyError as e:
        raise SystemExit(f"choose: the policy written to {path} does not load: {e}") from None
