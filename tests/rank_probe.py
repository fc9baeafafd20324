# SPDX-License-Identifier: Apache-2.0
"""Worker extension for the parallel tests (vllm_cpu and vllm_gpu tiers): records, in every rank,
the routing Lynx returns for each layer call, so the test can compare ranks bitwise. Named in the
engine arguments (`worker_extension_cls`), called by name through `collective_rpc`, so it works
with workers in their own processes (tensor or expert parallelism). Needs an eager engine: a
replayed CUDA graph runs no Python."""

from __future__ import annotations

from typing import Any

import lynx_ops.bench.dummy_loader  # noqa: F401  (registers the lynx_dummy load format in this worker)

# (layer name, ids, weights; weights None for a call Lynx left alone)
Record = tuple[str, list[list[int]], list[list[float]] | None]


def _rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if dist.is_initialized() else 0


class RankProbeWorker:
    def lynx_probe_install(self, all_calls: bool = False) -> int:
        """Wrap Lynx's routing; all_calls also records the calls it left alone (weights None)."""
        from lynx_ops.integration import layers

        records: list[Record] = []
        route = layers.route

        def recording(state, router_logits, topk_weights, topk_ids):
            weights, ids, remapped = route(state, router_logits, topk_weights, topk_ids)
            if remapped:
                records.append((state.name, ids.tolist(), weights.float().tolist()))
            elif all_calls:
                records.append((state.name, ids.tolist(), None))
            return weights, ids, remapped

        layers.route = recording
        self._lynx_probe_records = records
        return _rank()

    def lynx_probe_collect(self) -> dict[str, Any]:
        out = list(self._lynx_probe_records)
        self._lynx_probe_records.clear()
        return {"rank": _rank(), "records": out}

    # EPLB: the expert load vLLM records (per physical expert), folded back to logical ids.
    def _eplb_model_state(self):
        state = self.model_runner.eplb_state
        assert state is not None, "EPLB is not enabled in this engine"
        return state, next(iter(state.model_states.values()))

    def lynx_probe_eplb_reset(self) -> None:
        state, model = self._eplb_model_state()
        model.expert_load_window.zero_()
        model.expert_load_pass.zero_()
        state.expert_load_window_step = 0

    def lynx_probe_eplb_logical_load(self) -> list[list[int]]:
        import torch

        _, model = self._eplb_model_state()
        physical = model.expert_load_window.sum(0) + model.expert_load_pass  # (layers, physical)
        num_logical = int(model.logical_replica_count.shape[1])
        logical = torch.zeros(physical.shape[0], num_logical, dtype=torch.int64,
                              device=physical.device)  # fmt: skip
        logical.scatter_add_(1, model.physical_to_logical_map.long(), physical.long())
        return logical.tolist()


def ranks_agree(phase: dict[str, Any]) -> list[Record]:
    """Test side, for both tiers: ranks 0 and 1 recorded bitwise the same remaps in this phase (an
    engine_job phase entry). Returns rank 0's records, the calls Lynx left alone included."""
    per_rank = {r["rank"]: r["records"] for r in phase["rank_probe"]}
    assert sorted(per_rank) == [0, 1], per_rank.keys()
    remapped = {
        rank: [rec for rec in recs if rec[2] is not None] for rank, recs in per_rank.items()
    }
    assert remapped[0], "no remap recorded"
    assert remapped[0] == remapped[1], "the two ranks computed different remaps"
    return per_rank[0]
