# SPDX-License-Identifier: Apache-2.0
"""Soak: `vllm serve` under mixed traffic for a while, flag off then on; errors, validity, memory.

A bounded client loop on loopback: `concurrency` workers, each sending one request at a time with a
random prompt length (1 to `max_input` tokens) and output length (1 to `max_output`, ignore_eos), so
batches mix prefill, decode and chunked steps of every size. Each response must be HTTP 200 and
stream exactly the asked number of tokens. The server's memory (resident set of its whole process
tree) is sampled every `sample_s` seconds; growth is measured from the end of the first quarter of
the run (after warm-up and caches) to the end.
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


async def _run(server, model: str, spec: dict) -> dict[str, Any]:
    tally: dict[str, Any] = {"requests": 0, "valid": 0, "tokens": 0, "errors": []}
    t0 = time.time()
    deadline = t0 + spec["minutes"] * 60
    rss: list[tuple[float, float]] = []

    async def sampler() -> None:
        while time.time() < deadline:
            rss.append((time.time() - t0, _tree_rss_mib(server.proc.pid)))
            await asyncio.sleep(spec["sample_s"])

    await asyncio.gather(sampler(), *(
        _client_loop(server.base, model, spec, deadline, seed=i, tally=tally)
        for i in range(spec["concurrency"])))  # fmt: skip
    rss.append((time.time() - t0, _tree_rss_mib(server.proc.pid)))
    quarter = [m for t, m in rss if t >= spec["minutes"] * 60 / 4] or [rss[-1][1]]
    return {**{k: v for k, v in tally.items() if k != "errors"},
            "errors": len(tally["errors"]), "first_errors": tally["errors"][:5],
            "seconds": round(time.time() - t0, 1),
            "rss_mib_start": round(rss[0][1], 1), "rss_mib_after_warmup": round(quarter[0], 1),
            "rss_mib_end": round(rss[-1][1], 1), "rss_mib_max": round(max(m for _, m in rss), 1),
            "rss_growth_after_warmup_mib": round(rss[-1][1] - quarter[0], 1),
            "rss_samples": [[round(t, 1), round(m, 1)] for t, m in rss]}  # fmt: skip


def run_mode(label: str, model: str, serve_args: list[str], env_extra: dict[str, str],
             spec: dict, workdir: Path) -> dict[str, Any]:  # fmt: skip
    from lynx_ops.bench.online import Server

    server = Server(model, serve_args, env_extra, workdir / f"serve-{label}.log")
    try:
        print(f"[{label}] starting vllm serve ...", flush=True)
        server.wait_ready()
        print(f"[{label}] {spec['minutes']} min of traffic, {spec['concurrency']} clients ...",
              flush=True)  # fmt: skip
        result = asyncio.run(_run(server, model, spec))
        if env_extra.get("VLLM_LYNX_ENABLED") == "1":
            result["metrics"] = server.lynx_metrics()
        result["server_alive"] = server.proc.poll() is None
        print(f"[{label}] {result['valid']}/{result['requests']} valid, {result['errors']} errors, "
              f"RSS {result['rss_mib_after_warmup']:.0f} -> {result['rss_mib_end']:.0f} MiB",
              flush=True)  # fmt: skip
        return result
    finally:
        server.stop()
