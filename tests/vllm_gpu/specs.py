# SPDX-License-Identifier: Apache-2.0
"""The engine job spec the GPU tests share (lynx_ops.bench.engine_job): random token prompts, one
prefill step, then a decode phase; each test adds its engine arguments and probes."""

from __future__ import annotations

import random
from pathlib import Path


def random_prompts(batch: int, max_len: int, seed: int = 0) -> list[list[int]]:
    """`batch` prompts of 16 to max_len - 1 random token ids."""
    rng = random.Random(seed)
    return [[rng.randrange(3, 30000) for _ in range(rng.randrange(16, max_len))]
            for _ in range(batch)]  # fmt: skip


def decode_spec(model_dir: Path, engine: dict, *, batch: int, decode: int, max_len: int = 64,
                spread: float = 2.0, skew: float = 1.0, **extra) -> dict:  # fmt: skip
    """The spec of one engine: prefill (1 token), then `decode` tokens per prompt; `extra` adds
    top-level fields (probe, lora, rank_probe)."""
    return {"model": str(model_dir), "prompts": random_prompts(batch, max_len),
            "spread": spread, "skew": skew, "engine": engine,
            "phases": [{"name": "prefill", "max_tokens": 1},
                       {"name": "decode", "max_tokens": decode}], **extra}  # fmt: skip
