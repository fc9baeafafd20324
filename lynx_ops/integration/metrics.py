# SPDX-License-Identifier: Apache-2.0
"""Lynx counters on vLLM's Prometheus `/metrics`.

The counters live on the device in each worker (lynx_ops.stats); `/metrics` is served by the API
server, another process. The hand-off is a file per worker:

* workers: the stats thread of lynx_ops.integration.layers writes the per-layer cumulative sums to
  `<dir>/worker-<pid>.json` every VLLM_LYNX_METRICS_INTERVAL seconds (atomic replace; one small
  device-to-host copy per layer, no synchronisation of the serving stream);
* the engine core, where Lynx's scheduler runs the TPOT controller: `<dir>/controller-<pid>.json`
  (target, K in force, moving-average step time, decode steps at each K), at the same interval;
* API server: `LynxStatLogger`, added to vLLM's stat loggers when the plugin is on, registers a
  Prometheus collector that reads those files when `/metrics` is scraped.

`<dir>` is made by the first process that runs the plugin (the API server) and passed to the
engine and worker processes it starts through the environment (LYNX_METRICS_DIR, internal).
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

logger = logging.getLogger("lynx_ops")
DIR_ENV = "LYNX_METRICS_DIR"
_COLLECTOR: Any = None
_EXPORT: Any = None


def check_private_dir(path: Path) -> None:
    """Refuse a metrics directory another local user could write to: it must be a real directory
    (not a symlink), owned by this process's user, and not group- or world-writable. Otherwise
    another user could plant counters, or make a file of ours be overwritten through a link."""
    import stat

    try:
        st = os.lstat(path)
    except OSError as e:
        raise ValueError(f"{DIR_ENV}={path}: cannot be used ({e})") from None
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        raise ValueError(f"{DIR_ENV}={path}: not a directory (symlinks are refused)")
    if st.st_uid != os.getuid():
        raise ValueError(f"{DIR_ENV}={path}: owned by uid {st.st_uid}, not by this user")
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise ValueError(f"{DIR_ENV}={path}: writable by group or others (mode "
                         f"{stat.S_IMODE(st.st_mode):o}); use a private directory (0700)")  # fmt: skip


_CHECKED: set[str] = set()


def metrics_dir(create: bool = True) -> Path | None:
    """The directory shared by this server's processes; made (and removed at exit) by the first.
    A directory given through the environment is checked once per process (check_private_dir)."""
    path = os.environ.get(DIR_ENV)
    if path:
        if path not in _CHECKED:
            check_private_dir(Path(path))
            _CHECKED.add(path)
        return Path(path)
    if not create:
        return None
    made = tempfile.mkdtemp(prefix=f"lynx-metrics-{os.getpid()}-")
    os.environ[DIR_ENV] = made  # inherited by the engine and worker processes started later
    atexit.register(shutil.rmtree, made, True)
    return Path(made)


def _publish(kind: str, payload: dict[str, Any]) -> None:
    directory = metrics_dir(create=False)
    if directory is None or not directory.is_dir():
        return
    final = directory / f"{kind}-{os.getpid()}.json"
    # A fresh, unpredictable temporary name (O_CREAT | O_EXCL, mode 0600), then an atomic rename:
    # rename replaces a planted link itself, never the file it points to.
    fd, tmp = tempfile.mkstemp(prefix=f"{kind}-{os.getpid()}-", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps({"pid": os.getpid(), **payload}))
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def publish(rows: list[dict[str, Any]]) -> None:
    """Worker side: write this process's per-layer cumulative counters."""
    _publish("worker", {"layers": rows})


def publish_controller(snapshot: dict[str, Any]) -> None:
    """Engine-core side: the TPOT controller's snapshot (TpotController.snapshot)."""
    _publish("controller", {"target_ms": snapshot["target_ms"], "budget": snapshot["budget"],
                            "average_ms": snapshot["average_ms"],
                            "steps_at": {str(k): n for k, n in snapshot["steps_at"].items()}})  # fmt: skip


_ROW_KEYS = ("layer", "top_k", "calls", "before", "after", "top1", "rows", "moved")
_SKIPPED: set[str] = set()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, another user's
        return True
    return True


def _valid_rows(record: Any) -> list[dict[str, int]] | None:
    if not isinstance(record, dict) or not isinstance(record.get("pid"), int):
        return None
    layers = record.get("layers")
    if not isinstance(layers, list):
        return None
    return [row for row in layers if isinstance(row, dict) and all(
        isinstance(row.get(k), int) and not isinstance(row.get(k), bool) for k in _ROW_KEYS)]  # fmt: skip


def _skip_once(path: Path, why: str) -> None:
    if str(path) not in _SKIPPED:
        _SKIPPED.add(str(path))
        logger.warning("[lynx] /metrics skips %s: %s", path, why)


def _records(directory: Path, kind: str):
    """(path, parsed JSON) of every `<kind>-*.json` file, sorted. A file that cannot be read or
    parsed is skipped (and said once); one replaced or removed while reading is simply absent
    (the next scrape has it)."""
    for path in sorted(directory.glob(f"{kind}-*.json")):
        try:
            yield path, json.loads(path.read_text())
        except FileNotFoundError:
            continue
        except (OSError, ValueError, RecursionError) as e:
            _skip_once(path, f"unreadable ({e.__class__.__name__})")


def read_all(directory: Path) -> list[dict[str, Any]]:
    """Every live worker's latest file, its well-formed rows only (a worker that has not written
    yet is simply absent). A file that cannot be read or parsed, a malformed row, or the file of a
    worker process that has exited is skipped (and said once): one bad file must not take down
    the scrape, vLLM's own metrics included."""
    out = []
    for path, record in _records(directory, "worker"):
        rows = _valid_rows(record)
        if rows is None:
            _skip_once(path, "not a Lynx worker file")
            continue
        if len(rows) != len(record["layers"]):
            _skip_once(path, f"{len(record['layers']) - len(rows)} malformed rows")
        if not _alive(record["pid"]):
            continue  # a worker that has exited: its counters are no longer served
        out.append({"pid": record["pid"], "layers": rows})
    return out


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def read_controllers(directory: Path) -> list[dict[str, Any]]:
    """Every live engine core's controller file, well-formed ones only (as read_all)."""
    out = []
    for path, record in _records(directory, "controller"):
        steps = record.get("steps_at") if isinstance(record, dict) else None
        ok = (isinstance(steps, dict) and isinstance(record.get("pid"), int)
              and _number(record.get("target_ms")) and isinstance(record.get("budget"), int)
              and (record.get("average_ms") is None or _number(record.get("average_ms")))
              and all(k.isdigit() and isinstance(n, int) and not isinstance(n, bool)
                      for k, n in steps.items()))  # fmt: skip
        if not ok:
            _skip_once(path, "not a Lynx controller file")
            continue
        if _alive(record["pid"]):
            out.append(record)
    return out


# name suffix, help text: the TPOT controller's gauges (labels: engine), then its step counter
CONTROLLER_GAUGES = (
    ("controller_budget", "The setting the TPOT controller has in force (budget K or keep_k0 k0)",
     "budget"),
    ("controller_target_ms", "The TPOT controller's decode step target, ms", "target_ms"),
    ("controller_step_ms", "The controller's moving average of the decode step period, ms",
     "average_ms"),
)  # fmt: skip
CONTROLLER_STEPS = ("controller_decode_steps", "Decode steps the controller ran at each setting")


def controller_samples(directory: Path):
    """(family name without `lynx_`, labels, value) of every live controller: the gauges with
    (engine,), then the steps at each K with (engine, budget)."""
    for record in read_controllers(directory):
        engine = str(record["pid"])
        for name, _doc, key in CONTROLLER_GAUGES:
            if record[key] is not None:
                yield name, (engine,), record[key]
        for k, n in sorted(record["steps_at"].items(), key=lambda kv: -int(kv[0])):
            yield CONTROLLER_STEPS[0], (engine, k), n


# name suffix, help text, key in a layer row
COUNTERS = (
    ("decode_remaps", "Decode steps remapped, per MoE layer", "calls"),
    ("experts_before", "Distinct experts per remapped decode step before the remap, summed", "before"),
    ("experts_after", "Distinct experts per remapped decode step after the remap, summed", "after"),
    ("rows", "Token rows in remapped decode steps", "rows"),
    ("assignments_moved", "Token-to-expert assignments the remap moved to another expert", "moved"),
    ("rows_keeping_top1", "Rows that kept their top-1 expert", "top1"),
)  # fmt: skip


# name suffix, help text: the per-layer means derived from the counters
GAUGES = (
    ("experts_per_step_before", "Mean distinct experts per remapped decode step, stock routing"),
    ("experts_per_step_after", "Mean distinct experts per remapped decode step, with Lynx"),
    ("moved_assignment_share", "Share of token-to-expert assignments the remap moved"),
)
LABELS = ["layer", "worker"]


def samples(directory: Path):
    """(family name without `lynx_`, (layer, worker), value) for every well-formed row of every
    live worker: the COUNTERS, then the GAUGES where they are defined (a mean needs calls)."""
    from lynx_ops.stats import LayerStats

    for worker in read_all(directory):
        for row in worker["layers"]:
            labels = (str(row["layer"]), str(worker["pid"]))
            for name, _doc, key in COUNTERS:
                yield name, labels, row[key]
            stats = LayerStats(row["layer"], row["calls"], row["before"], row["after"],
                               row["top1"], row["rows"], row["moved"])  # fmt: skip
            if stats.calls:
                yield "experts_per_step_before", labels, stats.mean_before
                yield "experts_per_step_after", labels, stats.mean_after
            if stats.rows and row["top_k"]:
                yield "moved_assignment_share", labels, stats.moved_share(row["top_k"])


class LynxCollector:
    """Prometheus collector: the workers' files, read at scrape time."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        families = {name: CounterMetricFamily(f"lynx_{name}", doc, labels=LABELS)
                    for name, doc, _key in COUNTERS}  # fmt: skip
        families.update({name: GaugeMetricFamily(f"lynx_{name}", doc, labels=LABELS)
                         for name, doc in GAUGES})  # fmt: skip
        for name, labels, value in samples(self.directory):
            families[name].add_metric(list(labels), value)
        for name, doc, _key in CONTROLLER_GAUGES:
            families[name] = GaugeMetricFamily(f"lynx_{name}", doc, labels=["engine"])
        steps_name, steps_doc = CONTROLLER_STEPS
        families[steps_name] = CounterMetricFamily(f"lynx_{steps_name}", steps_doc,
                                                   labels=["engine", "budget"])  # fmt: skip
        for name, labels, value in controller_samples(self.directory):
            families[name].add_metric(list(labels), value)
        yield from families.values()


def register_collector() -> None:
    """API-server side: export the Lynx families on the registry vLLM serves (idempotent)."""
    global _COLLECTOR
    from prometheus_client import REGISTRY

    directory = metrics_dir()
    if _COLLECTOR is not None:
        with contextlib.suppress(KeyError):  # vLLM may have cleared the registry itself
            REGISTRY.unregister(_COLLECTOR)
    _COLLECTOR = LynxCollector(directory)
    REGISTRY.register(_COLLECTOR)


class MultiprocessExport:
    """Lynx's families for `/metrics` when PROMETHEUS_MULTIPROC_DIR is set (vLLM sets it itself
    for --api-server-count > 1): `/metrics` then serves a fresh registry fed by prometheus_client's
    multiprocess files, where a collector on the global registry never appears. So each API server
    re-exports the workers' files as multiprocess gauges, refreshed from vLLM's per-step stat
    hook at most once per VLLM_LYNX_METRICS_INTERVAL. Mode "max": every API server reads the same
    files, and the largest (freshest) cumulative value is the one served."""

    def __init__(self, directory: Path, interval_s: float) -> None:
        from prometheus_client import Gauge

        self.directory, self.interval_s, self.next_s = directory, interval_s, 0.0
        # the counters keep the names a counter family exposes (with _total)
        named = [(name, f"lynx_{name}_total", doc) for name, doc, _key in COUNTERS]
        named += [(name, f"lynx_{name}", doc) for name, doc in GAUGES]
        self.gauges = {name: Gauge(full, doc, LABELS, multiprocess_mode="max")
                       for name, full, doc in named}  # fmt: skip
        for name, doc, _key in CONTROLLER_GAUGES:
            self.gauges[name] = Gauge(f"lynx_{name}", doc, ["engine"], multiprocess_mode="max")
        steps_name, steps_doc = CONTROLLER_STEPS
        self.gauges[steps_name] = Gauge(f"lynx_{steps_name}_total", steps_doc,
                                        ["engine", "budget"], multiprocess_mode="max")  # fmt: skip

    def refresh(self, now: float) -> None:
        if now < self.next_s:
            return
        self.next_s = now + self.interval_s
        for name, labels, value in samples(self.directory):
            self.gauges[name].labels(*labels).set(value)
        for name, labels, value in controller_samples(self.directory):
            self.gauges[name].labels(*labels).set(value)


def stat_logger_class():
    """vLLM's stat-logger interface, implemented to hook the API server: Lynx's numbers come from
    the device counters, not from vLLM's per-iteration stats. With one API server a collector on
    the registry vLLM serves reads the workers' files at scrape time; with PROMETHEUS_MULTIPROC_DIR
    (several API servers) the per-step hook re-exports them as multiprocess gauges."""
    import time

    from vllm.v1.metrics.loggers import StatLoggerBase

    class LynxStatLogger(StatLoggerBase):
        def __init__(self, vllm_config: Any, engine_index: int = 0) -> None:
            from lynx_ops import envs

            global _EXPORT
            self.export = None
            if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
                if _EXPORT is None:  # one per process: the gauges register once
                    _EXPORT = MultiprocessExport(metrics_dir(), envs.VLLM_LYNX_METRICS_INTERVAL)
                self.export = _EXPORT
            else:
                register_collector()

        def record(self, scheduler_stats, iteration_stats, mm_cache_stats=None, engine_idx=0):
            if self.export is not None:
                try:
                    self.export.refresh(time.monotonic())
                except Exception as e:  # telemetry never takes the API server down
                    logger.warning("[lynx] /metrics export failed: %s", e)

        def log_engine_initialized(self) -> None:
            pass

    return LynxStatLogger


def install_stat_logger() -> bool:
    """Add LynxStatLogger to the stat loggers vLLM's AsyncLLM builds (its plugin hook,
    `load_stat_logger_plugin_factories`), only in processes where the plugin is on, so a server
    without VLLM_LYNX_ENABLED loads nothing. False (with the reason logged) if the hook is missing."""
    import sys

    try:
        from vllm.v1.metrics import loggers
    except ImportError:
        return False
    original = getattr(loggers, "load_stat_logger_plugin_factories", None)
    if original is None:
        return False
    if getattr(original, "_lynx", False):
        return True

    def with_lynx():
        return [*original(), stat_logger_class()]

    with_lynx._lynx = True  # type: ignore[attr-defined]
    loggers.load_stat_logger_plugin_factories = with_lynx
    async_llm = sys.modules.get("vllm.v1.engine.async_llm")  # imported it by name already
    if async_llm is not None and hasattr(async_llm, "load_stat_logger_plugin_factories"):
        async_llm.load_stat_logger_plugin_factories = with_lynx
    return True
