# SPDX-License-Identifier: Apache-2.0
"""Soak: `vllm serve` under mixed traffic for a while, flag off then on; errors, validity, memory.

A bounded client loop on loopback: `concurrency` workers, each sending one request at a time with a
random prompt length (1 to `max_input` tokens) and output length (1 to `max_output`, ignore_eos), so
batches mix prefill, decode and chunked steps of every size. Each response must be HTTP 200 and
stream exactly the asked number of tokens. With `bench_serve`, vLLM's own client (`vllm bench
serve`, random dataset, lengths mixed by a range ratio of 0.5) cycles through closed-loop
concurrencies and Poisson request rates meanwhile; each of its runs must finish with no failed
request. Beside them, `abuse` workers (default 1) alternate
streams they cut after two chunks with malformed requests (bad JSON, a negative max_tokens, token
ids outside the vocabulary, a prompt longer than the model takes): each malformed one must be
refused with a 4xx, and no request of any kind may get a 5xx or a dropped connection.

The server's memory (resident set of its whole process tree, and the GPU's used memory where
NVML sees one) is sampled every `sample_s` seconds; growth is measured from the end of the first
quarter of the run (after warm-up and caches) to the end; `progress-<mode>.json` in the work
directory holds the run so far at every sample, for a run cut short. vLLM's own counters on
/metrics must agree with the traffic: at least as many successful requests and generated tokens as
the valid responses counted.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from pathlib import Path
from typing import Any


def _tree_rss_mib(pid: int) -> float:
    """Resident memory of a process and all its descendants, from /proc (Linux)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
        except (OSError, IndexError, ValueError):
            continue
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        todo.extend(children.get(p, []))
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024


async def _one_request(session, url: str, model: str, prompt: list[int], out_len: int) -> dict:
    """One streamed completion; valid when it streams exactly `out_len` tokens."""
    body = {"model": model, "prompt": prompt, "max_tokens": out_len, "temperature": 0.0,
            "ignore_eos": True, "stream": True,
            "stream_options": {"include_usage": True, "continuous_usage_stats": True}}  # fmt: skip
    tokens = 0
    async with session.post(url + "/v1/completions", json=body) as resp:
        if resp.status != 200:
            return {"ok": False, "status": resp.status, "error": (await resp.text())[:300]}
        async for raw in resp.content:
            line = raw.decode().strip()
            if not line.startswith("data:") or line == "data: [DONE]":
                continue
            usage = json.loads(line[5:]).get("usage") or {}
            tokens = max(tokens, int(usage.get("completion_tokens") or 0))
    if not tokens:
        return {"ok": False, "error": "no tokens streamed"}
    return {"ok": tokens == out_len, "tokens": tokens}


def _malformed(rng: random.Random, model: str, spec: dict) -> tuple[str, bytes]:
    """(kind, body) of a request the server must refuse with a 4xx."""
    kind = rng.choice(["bad json", "negative max_tokens", "token id out of vocabulary",
                       "prompt too long"])  # fmt: skip
    if kind == "bad json":
        return kind, b'{"model": "' + model.encode() + b'", "prompt": [1, 2,'
    body: dict[str, Any] = {"model": model, "prompt": [5, 6, 7], "max_tokens": 4}
    if kind == "negative max_tokens":
        body["max_tokens"] = -1
    elif kind == "token id out of vocabulary":
        body["prompt"] = [spec["vocab"] + 10**6]
    else:
        body["prompt"] = [5] * (spec["max_model_len"] + 8)
    return kind, json.dumps(body).encode()


async def _abuse_loop(url: str, model: str, spec: dict, deadline: float, seed: int,
                      tally: dict) -> None:  # fmt: skip
    """Cut streams and malformed requests, alternately; what the server did with each."""
    import aiohttp

    rng = random.Random(10_000 + seed)
    abuse = tally["abuse"]
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as session:
        while time.time() < deadline:
            try:
                if abuse["cut"] <= abuse["malformed"]:
                    abuse["cut"] += 1
                    body = {"model": model, "prompt": [rng.randrange(3, spec["vocab"])] * 8,
                            "max_tokens": spec["max_output"], "ignore_eos": True, "stream": True}  # fmt: skip
                    async with session.post(url + "/v1/completions", json=body) as resp:
                        if resp.status != 200:
                            abuse["server_errors"].append(f"cut stream: status {resp.status}")
                            continue
                        chunks = 0
                        async for _ in resp.content:
                            chunks += 1
                            if chunks == 2:
                                break  # leaving the block closes the connection mid-stream
                        abuse["cut_after_chunks"] += chunks >= 2
                else:
                    abuse["malformed"] += 1
                    kind, raw = _malformed(rng, model, spec)
                    async with session.post(url + "/v1/completions", data=raw,
                                            headers={"Content-Type": "application/json"}) as resp:  # fmt: skip
                        await resp.read()
                        if 400 <= resp.status < 500:
                            abuse["refused_4xx"] += 1
                        else:
                            abuse["server_errors"].append(f"{kind}: status {resp.status}")
            except Exception as e:  # a dropped connection counts against the server
                abuse["server_errors"].append(f"{type(e).__name__}: {e}")
            await asyncio.sleep(0.2)


# vLLM's client cycles through these load points during a soak (closed loop, then arrivals/s)
BENCH_POINTS = [("concurrency", 4.0), ("concurrency", 16.0), ("rate", 2.0), ("concurrency", 64.0),
                ("rate", 8.0)]  # fmt: skip


def _bench_loop(server, spec: dict, deadline: float, workdir: Path, tally: dict,
                label: str) -> None:  # fmt: skip
    """`vllm bench serve` runs, one load point after another, until the deadline (a thread). The
    result files carry the mode's label: both modes share the work directory."""
    from lynx_ops.bench.online import client_args
    from lynx_ops.bench.vllm_client import LoopClient

    bench = tally["bench_serve"]
    client = LoopClient()
    spec = {**spec, "input_len": max(2, spec["max_input"] // 2),
            "output_len": max(2, spec["max_output"] // 2), "range_ratio": 0.5}  # fmt: skip
    try:
        i = 0
        while time.time() < deadline:
            point = BENCH_POINTS[i % len(BENCH_POINTS)]
            prompts = int(2 * point[1]) if point[0] == "concurrency" else int(10 * point[1])
            name = f"bench-{label}-{i:03d}-{point[0]}-{point[1]:g}.json"
            rc = client.run(client_args(server, point, max(prompts, 4), spec, i, workdir, name),
                            workdir / f"{name}.log")  # fmt: skip
            bench["runs"] += 1
            result = workdir / name
            done = json.loads(result.read_text()) if result.is_file() else {}
            bench["completed"] += int(done.get("completed", 0))
            bench["output_tokens"] += int(done.get("total_output_tokens", 0))
            failed = int(done.get("failed", 0)) if done else None
            if rc != 0 or failed:
                bench["failed_runs"].append(f"{name}: exit {rc}, failed requests {failed}")
            i += 1
    finally:
        client.close()


def _gpu_used_mib() -> float | None:
    """Used memory of the GPU the server runs on (NVML), or None without one."""
    try:
        import pynvml

        from lynx_ops.bench.nvml import _physical_index

        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(_physical_index())
        return pynvml.nvmlDeviceGetMemoryInfo(handle).used / 2**20
    except Exception:
        return None


def _vllm_counts(server) -> dict[str, float]:
    """vLLM's own request and token counters on /metrics (summed over their labels)."""
    return server.counter_sums({"vllm:request_success_total": "request_success",
                                "vllm:generation_tokens_total": "generation_tokens"})  # fmt: skip


async def _client_loop(url: str, model: str, spec: dict, deadline: float, seed: int,
                       tally: dict) -> None:  # fmt: skip
    import aiohttp

    rng = random.Random(seed)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as session:
        while time.time() < deadline:
            prompt = [
                rng.randrange(3, spec["vocab"]) for _ in range(rng.randint(1, spec["max_input"]))
            ]
            out_len = rng.randint(1, spec["max_output"])
            try:
                r = await _one_request(session, url, model, prompt, out_len)
            except Exception as e:  # a dropped connection is an error of the run, not of the tool
                r = {"ok": False, "error": f"{type(e).__name__}: {e}"}
            tally["requests"] += 1
            if r.get("ok"):
                tally["valid"] += 1
                tally["tokens"] += r["tokens"]
            else:
                tally["errors"].append(
                    r.get("error") or f"status {r.get('status')}, {r.get('tokens')} tokens"
                )


def _tally_view(tally: dict) -> dict[str, Any]:
    """The tally as results show it: error lists as counts and their first five; a copy, as the
    clients and vLLM's client thread keep adding to the tally itself."""
    abuse = tally["abuse"]
    return {"requests": tally["requests"], "valid": tally["valid"], "tokens": tally["tokens"],
            "bench_serve": {**tally["bench_serve"],
                            "failed_runs": list(tally["bench_serve"]["failed_runs"])},
            "errors": len(tally["errors"]), "first_errors": tally["errors"][:5],
            "abuse": {**{k: v for k, v in abuse.items() if k != "server_errors"},
                      "server_errors": len(abuse["server_errors"]),
                      "first_server_errors": abuse["server_errors"][:5]}}  # fmt: skip


def _samples(samples: list[tuple[float, float]]) -> list[list[float]]:
    return [[round(t, 1), round(m, 1)] for t, m in samples]


def write_progress(path: Path, seconds: float, tally: dict, rss: list, gpu: list) -> None:
    """The run so far, rewritten at every memory sample: a soak cut short (a GPU session's time
    running out) still leaves its tallies and memory samples. Replaced whole, never half written."""
    snapshot = {"seconds": round(seconds, 1), **_tally_view(tally),
                "rss_samples": _samples(rss), "gpu_samples": _samples(gpu)}  # fmt: skip
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(snapshot))
    tmp.replace(path)


async def _run(server, model: str, spec: dict, workdir: Path, label: str) -> dict[str, Any]:
    tally: dict[str, Any] = {"requests": 0, "valid": 0, "tokens": 0, "errors": [],
                             "bench_serve": {"runs": 0, "completed": 0, "output_tokens": 0,
                                             "failed_runs": []},
                             "abuse": {"cut": 0, "cut_after_chunks": 0, "malformed": 0,
                                       "refused_4xx": 0, "server_errors": []}}  # fmt: skip
    counts_before = _vllm_counts(server)
    t0 = time.time()
    deadline = t0 + spec["minutes"] * 60
    rss: list[tuple[float, float]] = []
    gpu: list[tuple[float, float]] = []

    async def sampler() -> None:
        while time.time() < deadline:
            now = time.time() - t0
            rss.append((now, _tree_rss_mib(server.proc.pid)))
            used = _gpu_used_mib()
            if used is not None:
                gpu.append((now, used))
            write_progress(workdir / f"progress-{label}.json", now, tally, rss, gpu)
            await asyncio.sleep(spec["sample_s"])

    await asyncio.gather(sampler(), *(
        _client_loop(server.base, model, spec, deadline, seed=i, tally=tally)
        for i in range(spec["concurrency"])), *(
        _abuse_loop(server.base, model, spec, deadline, seed=i, tally=tally)
        for i in range(spec.get("abuse", 1))), *(
        [asyncio.to_thread(_bench_loop, server, spec, deadline, workdir, tally, label)]
        if spec.get("bench_serve") else []))  # fmt: skip
    rss.append((time.time() - t0, _tree_rss_mib(server.proc.pid)))
    counts = {k: v - counts_before[k] for k, v in _vllm_counts(server).items()}
    warm = spec["minutes"] * 60 / 4
    quarter = [m for t, m in rss if t >= warm] or [rss[-1][1]]
    gpu_quarter = [m for t, m in gpu if t >= warm]
    return {**_tally_view(tally),
            "vllm_counts": counts,
            # vLLM counted at least what the clients saw finish (cut streams may add tokens)
            "metrics_consistent": counts["request_success"]
            >= tally["valid"] + tally["bench_serve"]["completed"]
            and counts["generation_tokens"]
            >= tally["tokens"] + tally["bench_serve"]["output_tokens"],
            "seconds": round(time.time() - t0, 1),
            "rss_mib_start": round(rss[0][1], 1), "rss_mib_after_warmup": round(quarter[0], 1),
            "rss_mib_end": round(rss[-1][1], 1), "rss_mib_max": round(max(m for _, m in rss), 1),
            "rss_growth_after_warmup_mib": round(rss[-1][1] - quarter[0], 1),
            "rss_samples": _samples(rss),
            "gpu_mib_after_warmup": round(gpu_quarter[0], 1) if gpu_quarter else None,
            "gpu_growth_after_warmup_mib": (round(gpu[-1][1] - gpu_quarter[0], 1)
                                            if gpu_quarter else None),
            "gpu_samples": _samples(gpu)}  # fmt: skip


def run_mode(label: str, model: str, serve_args: list[str], env_extra: dict[str, str],
             spec: dict, workdir: Path) -> dict[str, Any]:  # fmt: skip
    from lynx_ops.bench.online import Server

    server = Server(model, serve_args, env_extra, workdir / f"serve-{label}.log")
    try:
        print(f"[{label}] starting vllm serve ...", flush=True)
        server.wait_ready()
        print(f"[{label}] {spec['minutes']} min of traffic, {spec['concurrency']} clients ...",
              flush=True)  # fmt: skip
        result = asyncio.run(_run(server, model, spec, workdir, label))
        if env_extra.get("VLLM_LYNX_ENABLED") == "1":
            result["metrics"] = server.lynx_metrics()
        result["server_alive"] = server.proc.poll() is None
        print(f"[{label}] {result['valid']}/{result['requests']} valid, {result['errors']} errors, "
              f"RSS {result['rss_mib_after_warmup']:.0f} -> {result['rss_mib_end']:.0f} MiB",
              flush=True)  # fmt: skip
        return result
    finally:
        server.stop()
