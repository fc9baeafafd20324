# SPDX-License-Identifier: Apache-2.0
"""Probe for test_router_inputs: records, in the engine process, whether the top-k ids each
remapped call receives are the top-k of the router logits it receives (`layers.route`, which the
router hook calls by module attribute). Loaded by lynx_ops.bench.engine_job through the spec's
"probe"; needs an eager engine (a replayed CUDA graph runs no Python)."""

from __future__ import annotations

RECORDS: list[dict] = []  # per remapped call: rows, rows whose ids are their logits' top-k


def install() -> None:

    from lynx_ops.integration import layers

    original = layers.route

    def recording(state, router_logits, topk_weights, topk_ids):
        out = original(state, router_logits, topk_weights, topk_ids)
        if out[2]:  # remapped: a uniform-decode step
            n = int(topk_ids.shape[0])
            logits = router_logits[:n, : state.facts.num_experts].float()
            top = logits.topk(topk_ids.shape[1], dim=1).indices.sort(dim=1).values
            same = (top == topk_ids.long().sort(dim=1).values).all(dim=1)
            RECORDS.append({"layer": state.name, "rows": n, "top_k_rows": int(same.sum()),
                            "dtype": str(router_logits.dtype),
                            "shape": list(router_logits.shape)})  # fmt: skip
        return out

    layers.route = recording


def collect() -> list[dict]:
    out = list(RECORDS)
    RECORDS.clear()
    return out
