# SPDX-License-Identifier: Apache-2.0
"""The plugin entry point and the per-layer policy check, without starting an engine."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

pytest.importorskip("vllm")

from lynx_ops.integration import layers  # noqa: E402
from lynx_ops.registry import PolicyError  # noqa: E402
from lynx_ops.routing import Scoring  # noqa: E402

pytestmark = pytest.mark.vllm_cpu
ROOT = Path(__file__).resolve().parents[1]


def _python(code: str, **env) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("VLLM_LYNX")}
    full_env.update(env, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=full_env, timeout=300)  # fmt: skip


def test_disabled_plugin_imports_and_patches_nothing():
    proc = _python(
        "import sys; from lynx_ops.plugin import register; register(); register();"
        "print(sorted(m for m in ('triton', 'vllm', 'lynx_ops.integration') if m in sys.modules))"
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_enabled_plugin_is_reentrant_and_registers_runner_and_env_names():
    proc = _python(
        "from lynx_ops.plugin import register; register(); register();"
        "from vllm.model_executor.custom_op import op_registry_oot;"
        "import vllm.envs as e;"
        "print(op_registry_oot['MoERunner'].__name__, 'VLLM_LYNX_ENABLED' in e.environment_variables)",
        VLLM_LYNX_ENABLED="1",
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == "LynxMoERunner True"


def test_every_variable_is_known_to_vllm_and_only_graph_changing_ones_key_the_compile_cache():
    # vLLM's own check, made fatal: an unregistered VLLM_LYNX_* name would raise here.
    code = (
        "import sys, vllm.envs as e; from lynx_ops.plugin import register; register();"
        "e.validate_environ(hard_fail=True); f = e.compile_factors();"
        "print(repr({k: v for k, v in f.items() if k.startswith('VLLM_LYNX')}))"
    )
    common = dict(VLLM_LYNX_ENABLED="1", VLLM_LYNX_CONTROLLER_FILE="/nonexistent.json")

    def factors(**env) -> str:
        proc = _python(code, **common, **env)
        assert proc.returncode == 0, proc.stderr[-2000:]
        return proc.stdout.strip().splitlines()[-1]

    base = factors(VLLM_LYNX_LOG_INTERVAL="5", VLLM_LYNX_METRICS_INTERVAL="5")
    for name in ("VLLM_LYNX_LOG_INTERVAL", "VLLM_LYNX_METRICS_INTERVAL", "VLLM_LYNX_CEILING_EXPERTS",
                 "VLLM_LYNX_CONTROLLER_FILE", "VLLM_LYNX_CONFIG_FILE", "VLLM_LYNX_ENABLED"):  # fmt: skip
        assert name in base
    assert factors(VLLM_LYNX_LOG_INTERVAL="30", VLLM_LYNX_METRICS_INTERVAL="0") == base
    assert factors(VLLM_LYNX_LOG_INTERVAL="5", VLLM_LYNX_METRICS_INTERVAL="5",
                   VLLM_LYNX_CEILING_EXPERTS="16") != base  # fmt: skip


def test_bad_policy_file_fails_at_register(tmp_path):
    bad = tmp_path / "policy.json"
    bad.write_text('{"policies": [{"model_type": "qwen3_moe", "alpha": -1}]}')
    proc = _python(
        "from lynx_ops.plugin import register; register()",
        VLLM_LYNX_ENABLED="1", VLLM_LYNX_CONFIG_FILE=str(bad),
    )  # fmt: skip
    assert proc.returncode != 0
    assert "alpha" in proc.stderr and str(bad) in proc.stderr


class _Router:
    def __init__(self, scoring_func="softmax", **kw):
        self.scoring_func = scoring_func
        self.__dict__.update(kw)


class FusedTopKRouter(_Router):
    pass


class ZeroExpertRouter(_Router):
    pass


@pytest.mark.parametrize(
    "router,scoring,groups",
    [
        (FusedTopKRouter("softmax"), Scoring.SOFTMAX, 0),
        (FusedTopKRouter("sigmoid"), Scoring.SIGMOID, 0),
        (FusedTopKRouter("sigmoid", e_score_correction_bias=object()), Scoring.SIGMOID_BIAS, 0),
        (FusedTopKRouter("softmax", num_expert_group=8, topk_group=3), Scoring.SOFTMAX, 8),
        (FusedTopKRouter("softmax", num_expert_group=8, topk_group=8), Scoring.SOFTMAX, 0),
    ],
    ids=["softmax", "sigmoid", "sigmoid-bias", "grouped", "all-groups-allowed"],
)
def test_router_facts(router, scoring, groups):
    facts = layers.router_facts(router, 64, 6)
    assert facts.unsupported is None
    assert facts.scoring == scoring and facts.num_expert_group == groups


def test_unsupported_routers_are_named():
    assert "zero" in layers.router_facts(ZeroExpertRouter(), 64, 6).unsupported
    odd = layers.router_facts(FusedTopKRouter("sqrtsoftplus"), 64, 6)
    assert "sqrtsoftplus" in odd.unsupported


def _runner(router, name="model.layers.3.mlp.experts", num_experts=128, top_k=8):
    moe = SimpleNamespace(num_experts=num_experts, num_logical_experts=num_experts,
                          experts_per_token=top_k)  # fmt: skip
    return SimpleNamespace(moe_config=moe, router=router, layer_name=name, parameters=lambda: [])


def _vllm_config(hf):
    return SimpleNamespace(model_config=SimpleNamespace(hf_text_config=hf, hf_config=hf),
                           speculative_config=None)  # fmt: skip


def test_attach_checks_policy_against_router(monkeypatch):
    monkeypatch.delenv("VLLM_LYNX_CONFIG_FILE", raising=False)
    hf = SimpleNamespace(model_type="qwen3_moe", architectures=["Qwen3MoeForCausalLM"],
                         num_experts=128, num_experts_per_tok=8)  # fmt: skip
    state = layers.attach(_runner(FusedTopKRouter("softmax")), _vllm_config(hf))
    assert state.index == 3 and state.policy.family == "qwen3_moe"
    with pytest.raises(PolicyError, match="scoring=softmax.*sigmoid"):
        layers.attach(_runner(FusedTopKRouter("sigmoid")), _vllm_config(hf))
    layers.LAYERS.clear()


def test_attach_leaves_non_moe_config_stock(monkeypatch):
    monkeypatch.delenv("VLLM_LYNX_CONFIG_FILE", raising=False)
    hf = SimpleNamespace(model_type="llama", architectures=["LlamaForCausalLM"])
    assert layers.attach(_runner(FusedTopKRouter()), _vllm_config(hf)) is None


@pytest.mark.parametrize(
    "name,index",
    [("model.layers.17.mlp.experts", 17), ("language_model.model.layers.0.feed_forward", 0)],
)
def test_layer_index(name, index):
    assert layers.layer_index(name) == index


# Qwen3-MoE at 128 experts / top-8 takes keep_k0 with k0 = 6 up to 16 padded rows (its family
# default, registry/families/qwen_moe.py); softmax, renormalised, scale 1, ungrouped.
QWEN3_16_ROWS_K0 = 6
TAIL = (0, 0, 1.0, 0)


def _qwen3_layer(monkeypatch, tmp_path=None, entry: dict | None = None):
    """A Qwen3-MoE layer (E=128, k=8) attached with the family's policy, or under a policy file
    holding `entry`; decode gating as under FULL_AND_PIECEWISE graphs."""
    import json

    import torch
    from vllm.config import CUDAGraphMode

    if entry is None:
        monkeypatch.delenv("VLLM_LYNX_CONFIG_FILE", raising=False)
    else:
        path = tmp_path / "policy.json"
        path.write_text(json.dumps({"policies": [{"model_type": "qwen3_moe", **entry}]}))
        monkeypatch.setenv("VLLM_LYNX_CONFIG_FILE", str(path))
    hf = SimpleNamespace(model_type="qwen3_moe", architectures=["Qwen3MoeForCausalLM"],
                         num_experts=128, num_experts_per_tok=8)  # fmt: skip
    config = _vllm_config(hf)
    config.compilation_config = SimpleNamespace(cudagraph_mode=CUDAGraphMode.FULL_AND_PIECEWISE)
    runner = _runner(FusedTopKRouter("softmax"))
    runner.parameters = lambda: [torch.zeros(1)]
    return layers.attach(runner, config)


def test_a_bucket_turned_off_routes_vanilla_without_the_op(monkeypatch, tmp_path):
    """kind "off" in a by_batch bucket: steps of that padded size keep the router's choice and
    never reach the op (LayerState.remap refuses them); larger steps still remap."""
    import torch
    import vllm.forward_context as fc
    from vllm.config import CUDAGraphMode

    from lynx_ops.reference import remap_ref
    from tests.helpers import Shape, make_batch

    entry = {"kind": "bins", "alpha": 3, "beta": 2, "by_batch": [{"max_batch": 8, "kind": "off"}]}
    state = _qwen3_layer(monkeypatch, tmp_path, entry)
    assert "B<=8: off (vanilla routing)" in state.policy.describe()
    ctx = SimpleNamespace(cudagraph_runtime_mode=CUDAGraphMode.NONE,
                          attn_metadata={"attn": SimpleNamespace(max_query_len=1)})  # fmt: skip
    monkeypatch.setattr(fc, "is_forward_context_available", lambda: True)
    monkeypatch.setattr(fc, "get_forward_context", lambda: ctx)

    x, w, ids, _ = make_batch(Shape(128, 8, alpha=3.0, beta=2), 16, seed=3)
    ctx.attn_metadata["attn"].query_start_loc = torch.arange(9, dtype=torch.int32)  # 8 of 8
    layers.DECISIONS.clear()
    off_w, off_ids, remapped = layers.route(state, x[:8], w[:8], ids[:8])
    assert not remapped and torch.equal(off_w, w[:8]) and torch.equal(off_ids, ids[:8])
    assert layers.DECISIONS == {layers.POLICY_OFF: 1}
    with pytest.raises(RuntimeError, match="turns off"):
        state.remap(x[:8], w[:8], ids[:8], torch.tensor([8]))

    ctx.attn_metadata["attn"].query_start_loc = torch.arange(17, dtype=torch.int32)  # 16 of 16
    got_w, got_ids, remapped = layers.route(state, x, w, ids)
    want = remap_ref(x, w, ids, torch.tensor([16]), None, 3.0, 2, *TAIL)
    assert remapped and torch.equal(got_ids, want[1]) and not torch.equal(got_ids, ids)


def test_route_remaps_decode_steps_and_counts_them(monkeypatch):
    """The function both hooks call, with a real policy and op, under a hand-built context."""
    import torch
    import vllm.forward_context as fc
    from vllm.config import CUDAGraphMode

    from lynx_ops.reference import keep_ref
    from tests.helpers import Shape, make_batch

    state = _qwen3_layer(monkeypatch)
    x, w, ids, _ = make_batch(Shape(128, 8, alpha=3.0, beta=2), 16, seed=3)
    qsl = torch.tensor([0, 3, 6, 9, 12, 12], dtype=torch.int32)  # 12 real tokens of 16

    ctx = SimpleNamespace(cudagraph_runtime_mode=CUDAGraphMode.NONE,
                          attn_metadata={"attn": SimpleNamespace(max_query_len=1,
                                                                 query_start_loc=qsl)})  # fmt: skip
    monkeypatch.setattr(fc, "is_forward_context_available", lambda: True)
    monkeypatch.setattr(fc, "get_forward_context", lambda: ctx)
    got_w, got_ids, remapped = layers.route(state, x, w, ids)
    want = keep_ref(x, w, ids, torch.tensor([12]), None, QWEN3_16_ROWS_K0, *TAIL)
    assert remapped and torch.equal(got_ids, want[1]) and torch.equal(got_w, want[0])
    assert not torch.equal(got_ids, ids), "the synthetic batch should change"

    ctx.attn_metadata["attn"].max_query_len = 5  # a mixed batch: stock routing, not counted
    same_w, same_ids, remapped = layers.route(state, x, w, ids)
    assert not remapped and same_w is w and same_ids is ids
    (stats,) = state.stats.snapshot()
    assert stats.calls == 1 and stats.rows == 12
    counted = (stats.experts_before, stats.experts_after, stats.rows_keeping_top1, stats.rows,
               stats.assignments_moved)  # fmt: skip
    assert counted == tuple(want[2].tolist())

    # One row (batch-1 decode): the remap is the identity there (checked on the reference), so
    # route() skips the op, says why, and counts no remap.
    ctx.attn_metadata["attn"].max_query_len = 1
    ctx.attn_metadata["attn"].query_start_loc = torch.tensor([0, 1], dtype=torch.int32)
    x1, w1, ids1 = x[:1], w[:1], ids[:1]
    ref_w, ref_ids, _ = keep_ref(x1, w1, ids1, torch.tensor([1]), None, QWEN3_16_ROWS_K0, *TAIL)
    assert torch.equal(ref_ids, ids1) and torch.equal(ref_w, w1)
    layers.DECISIONS.clear()
    one_w, one_ids, remapped = layers.route(state, x1, w1, ids1)
    assert not remapped and one_w is w1 and one_ids is ids1
    assert layers.DECISIONS == {layers.SINGLE_ROW: 1}
    assert state.stats.snapshot()[0].calls == 1

    # The benchmark's ceiling (VLLM_LYNX_CEILING_EXPERTS=K): k consecutive experts mod K from each
    # row's top-1, so a row keeps k distinct experts and the batch reads at most K.
    from lynx_ops.bench.ceiling import ceiling_override

    ctx.attn_metadata["attn"].query_start_loc = qsl
    state.decode_override = ceiling_override(16)(state)
    c_w, c_ids, remapped = layers.route(state, x, w, ids)
    assert remapped and c_w is w
    assert torch.equal(c_ids[:, 0], ids[:, 0] % 16)
    assert all(len(set(row)) == 8 for row in c_ids.tolist())
    assert int(c_ids.max()) < 16 and len(set(c_ids.flatten().tolist())) <= 16
    # ... and a single row too (the ceiling decides every decode step), counted as a remap.
    ctx.attn_metadata["attn"].query_start_loc = torch.tensor([0, 1], dtype=torch.int32)
    calls = state.stats.snapshot()[0].calls
    c1_w, c1_ids, remapped = layers.route(state, x1, w1, ids1)
    assert remapped and torch.equal(c1_ids[0, 0], ids1[0, 0] % 16)
    assert state.stats.snapshot()[0].calls == calls + 1
    with pytest.raises(PolicyError, match=r"VLLM_LYNX_CEILING_EXPERTS=4 must be in \[k=8, E=128\]"):
        ceiling_override(4)(state)
    layers.LAYERS.clear()


def test_stats_line_reports_deltas_since_last_line():
    import torch

    from lynx_ops.stats import ExpertStats

    a = SimpleNamespace(stats=ExpertStats(1, "cpu"), facts=SimpleNamespace(top_k=8), index=0)
    b = SimpleNamespace(stats=ExpertStats(1, "cpu"), facts=SimpleNamespace(top_k=8), index=1)
    layers.LAYERS.update({"l.0.x": a, "l.1.x": b})
    try:
        previous: dict = {}
        for _ in range(3):
            a.stats.record(0, torch.tensor([20, 10, 15, 16, 8], dtype=torch.int32))
            b.stats.record(0, torch.tensor([20, 6, 16, 16, 16], dtype=torch.int32))
        line = layers.stats_line(previous)
        assert line.startswith("3 decode remaps per layer over 2 layers")
        assert "20.0 -> 8.0 (60% fewer)" in line
        # moved 3 x (8 + 16) of 3 x 2 x 16 rows x 8 slots = 72 / 768
        assert line.endswith("9.4% of assignments moved")
        # /metrics rows: cumulative sums per layer with the layer's k
        assert layers.counters() == [
            {"layer": 0, "top_k": 8, "calls": 3, "before": 60, "after": 30, "top1": 45,
             "rows": 48, "moved": 24},
            {"layer": 1, "top_k": 8, "calls": 3, "before": 60, "after": 18, "top1": 48,
             "rows": 48, "moved": 48},
        ]  # fmt: skip
        assert layers.stats_line(previous) is None  # nothing new since
        a.stats.record(0, torch.tensor([10, 10, 16, 16, 0], dtype=torch.int32))
        assert "10.0 -> 10.0" in layers.stats_line(previous)
    finally:
        layers.LAYERS.clear()


def _wrapped_torch_router(monkeypatch, eplb_state=None, packed_read=False):
    """A real vLLM BaseRouter subclass (pure-torch top-k so it runs on CPU), wrapped by Lynx as on
    GPUs, under a uniform-decode forward context. Returns (router, state, logits, stock routing).
    `packed_read`: its top-k reads the logits' rows as packed whatever their stride, as vLLM
    0.26's CUDA topk_softmax does (vllm-project/vllm#56900)."""
    import torch
    import vllm.forward_context as fc
    from vllm.config import CUDAGraphMode
    from vllm.model_executor.layers.fused_moe.router.base_router import BaseRouter

    from lynx_ops.integration.runner import wrap_router
    from tests.helpers import Shape, make_batch

    class TorchTopKRouter(BaseRouter):
        scoring_func = "softmax"
        routing_method_type = None  # abstract in vLLM; unused here

        def _compute_routing(self, hidden_states, router_logits, indices_type, *, input_ids=None):
            if packed_read:
                T, E = router_logits.shape
                router_logits = router_logits.as_strided(
                    (T, E), (E, 1), router_logits.storage_offset()
                )
            vals, ids = router_logits.float().topk(self.top_k, dim=1)
            return vals.softmax(dim=1), ids.to(torch.int32)

    router = TorchTopKRouter(top_k=8, global_num_experts=128, eplb_state=eplb_state)
    monkeypatch.delenv("VLLM_LYNX_CONFIG_FILE", raising=False)
    hf = SimpleNamespace(model_type="qwen3_moe", architectures=["Qwen3MoeForCausalLM"],
                         num_experts=128, num_experts_per_tok=8)  # fmt: skip
    config = _vllm_config(hf)
    config.compilation_config = SimpleNamespace(cudagraph_mode=CUDAGraphMode.FULL_AND_PIECEWISE)
    state = layers.attach(_runner(router), config)
    wrap_router(router, state)

    x, _, _, _ = make_batch(Shape(128, 8, alpha=3.0, beta=2), 16, seed=5)
    qsl = torch.tensor([0, 4, 8, 12, 16], dtype=torch.int32)
    ctx = SimpleNamespace(cudagraph_runtime_mode=CUDAGraphMode.FULL,
                          attn_metadata={"a": SimpleNamespace(max_query_len=1,
                                                              query_start_loc=qsl)})  # fmt: skip
    monkeypatch.setattr(fc, "is_forward_context_available", lambda: True)
    monkeypatch.setattr(fc, "get_forward_context", lambda: ctx)
    stock_w, stock_ids = x.float().topk(8, dim=1)
    return router, state, x, (stock_w.softmax(dim=1), stock_ids.to(torch.int32))


def test_wrapped_router_feeds_remapped_ids_to_capture_and_dtype_cast(monkeypatch):
    """The routed-experts capture sees the remapped logical ids, and the dtype cast still applies."""
    import torch

    from lynx_ops.reference import keep_ref

    router, state, x, (stock_w, stock_ids) = _wrapped_torch_router(monkeypatch)
    captured = []
    router.set_capture_fn(captured.append)
    weights, ids = router._select_experts(torch.zeros(16, 4), x, torch.int64)

    want = keep_ref(x, stock_w, stock_ids, torch.tensor([16]), None, QWEN3_16_ROWS_K0, *TAIL)
    assert ids.dtype == torch.int64 and torch.equal(ids, want[1].long())
    assert torch.equal(captured[0], want[1]) and torch.equal(weights, want[0])
    assert not torch.equal(want[1], stock_ids), "the batch should be remapped"
    layers.LAYERS.clear()


def test_wrapped_router_hands_the_top_k_packed_rows(monkeypatch, caplog):
    """Logits with padded rows (the layout Inductor may give a gate's output) reach a top-k that
    reads rows as packed: the wrapper hands it a packed copy, so its ids are the logits' top-k and
    the remap sees the routing it assumes; one warning says so. Without the copy the stub's ids
    differ from the real top-k (the check that the stub reproduces the bug)."""
    import torch

    from lynx_ops.integration import layer_state
    from lynx_ops.reference import keep_ref
    from tests.helpers import row_padded

    router, state, x, (stock_w, stock_ids) = _wrapped_torch_router(monkeypatch, packed_read=True)
    padded = row_padded(x, 136, 50.0)  # the gap holds logits that would win every row if read
    assert padded.stride() == (136, 1)
    unwrapped = type(router)._compute_routing(router, None, padded, None)[1]
    assert not torch.equal(unwrapped, stock_ids), "the stub should misread padded rows"

    handed = []  # the ids the router's top-k hands to the remap
    route = layers.route
    monkeypatch.setattr(
        layers, "route", lambda st, lg, w, i: handed.append(i) or route(st, lg, w, i)
    )
    layer_state.LOGGED.discard("padded-logits")
    with caplog.at_level("WARNING"):
        weights, ids = router._select_experts(torch.zeros(16, 4), padded, torch.int32)
        router._select_experts(torch.zeros(16, 4), padded, torch.int32)
    want = keep_ref(x, stock_w, stock_ids, torch.tensor([16]), None, QWEN3_16_ROWS_K0, *TAIL)
    assert torch.equal(handed[0], stock_ids), "the top-k ran on misread rows"
    assert torch.equal(ids, want[1]) and torch.equal(weights, want[0])
    warned = [r for r in caplog.records if "padded rows" in r.getMessage()]
    assert len(warned) == 1 and "(136, 1)" in warned[0].getMessage()
    layers.LAYERS.clear()


def test_wrapped_router_remaps_logical_ids_before_the_eplb_map(monkeypatch):
    """Under EPLB the remap acts on logical ids, before vLLM maps them to physical replicas and
    records the load: the map receives Lynx's ids, and the load it records, folded back to logical
    experts, is the count of those ids (not of stock routing's). vLLM's map-and-record is a Triton
    kernel defined on CUDA only; a torch stand-in with the same contract takes its place here. The
    real kernel and EplbState are checked on two GPUs (tests/vllm_gpu/test_parallel.py)."""
    import torch
    from vllm.distributed.eplb.eplb_state import EplbLayerState
    from vllm.model_executor.layers.fused_moe.router import base_router

    from lynx_ops.reference import keep_ref

    # 128 logical experts on 144 physical slots: experts 0-15 have a second replica at 128 + e.
    num_logical, num_physical = 128, 144
    l2p = torch.full((num_logical, 2), -1, dtype=torch.int64)
    l2p[:, 0] = torch.arange(num_logical)
    l2p[:16, 1] = torch.arange(128, num_physical)
    replicas = torch.ones(num_logical, dtype=torch.int64)
    replicas[:16] = 2
    p2l = torch.cat([torch.arange(num_logical), torch.arange(16)])
    eplb = EplbLayerState()
    eplb.set_layer_state(
        0, torch.zeros(1, num_physical, dtype=torch.int64), l2p[None], replicas[None]
    )
    eplb.should_record_tensor = torch.ones((), dtype=torch.bool)
    eplb.num_unpadded_tokens_tensors = [torch.tensor(16)]

    seen = []

    def map_and_record(topk_ids, expert_load_view, logical_to_physical_map,
                       logical_replica_count, record_enabled, num_unpadded_tokens=None):  # fmt: skip
        seen.append(topk_ids.clone())
        token = torch.arange(topk_ids.shape[0])[:, None].expand_as(topk_ids)
        replica = token % logical_replica_count[topk_ids.long()]  # spread tokens over replicas
        physical = logical_to_physical_map[topk_ids.long(), replica]
        if bool(record_enabled):
            expert_load_view.scatter_add_(
                0, physical.flatten(), torch.ones_like(physical.flatten())
            )
        return physical.to(topk_ids.dtype)

    monkeypatch.setattr(base_router, "eplb_map_to_physical_and_record", map_and_record)
    router, state, x, (stock_w, stock_ids) = _wrapped_torch_router(monkeypatch, eplb)
    weights, physical = router._select_experts(torch.zeros(16, 4), x, torch.int64)

    want_w, want_ids, _ = keep_ref(x, stock_w, stock_ids, torch.tensor([16]), None,
                                   QWEN3_16_ROWS_K0, *TAIL)  # fmt: skip
    assert len(seen) == 1 and torch.equal(seen[0], want_ids), "the EPLB map got other ids"
    assert torch.equal(p2l[physical], want_ids.long()) and torch.equal(weights, want_w)
    assert int(physical.max()) >= num_logical, "no token reached a redundant replica"
    logical_load = torch.zeros(num_logical, dtype=torch.int64)
    logical_load.scatter_add_(0, p2l, eplb.expert_load_view)
    assert torch.equal(logical_load, torch.bincount(want_ids.flatten().long(), minlength=128))
    assert not torch.equal(logical_load, torch.bincount(stock_ids.flatten().long(), minlength=128))
    layers.LAYERS.clear()


def test_malformed_variable_fails_at_register():
    proc = _python("from lynx_ops.plugin import register; register()",
                   VLLM_LYNX_ENABLED="1", VLLM_LYNX_LOG_INTERVAL="often")  # fmt: skip
    assert proc.returncode != 0 and "VLLM_LYNX_LOG_INTERVAL='often' is not a number" in proc.stderr


@pytest.mark.parametrize(
    "value, message",
    [("inf", "must be a finite number"), ("nan", "must be a finite number"),
     ("-1", "must be a finite number"), ("1e-9", "is below the 1 s floor")],
)  # fmt: skip
def test_bad_interval_values_are_rejected(monkeypatch, value, message):
    """inf froze the export, nan turned it off silently and killed the stats thread, 1e-9 spun
    (about 6000 file writes in 3 s)."""
    from lynx_ops import envs

    monkeypatch.setenv("VLLM_LYNX_METRICS_INTERVAL", value)
    with pytest.raises(ValueError, match=f"VLLM_LYNX_METRICS_INTERVAL='{value}' {message}"):
        envs.validate()


def test_empty_interval_is_the_default_and_zero_is_off(monkeypatch):
    from lynx_ops import envs

    monkeypatch.setenv("VLLM_LYNX_METRICS_INTERVAL", "")
    monkeypatch.setenv("VLLM_LYNX_LOG_INTERVAL", "0")
    assert envs.VLLM_LYNX_METRICS_INTERVAL == 10.0 and envs.VLLM_LYNX_LOG_INTERVAL == 0.0


@pytest.mark.parametrize("value", ["2", "enable", "y", "enabled"])
def test_unrecognised_enable_values_stop_startup(monkeypatch, value):
    """They used to read as off, silently (and vLLM then logged a misleading unknown-variable
    warning)."""
    from lynx_ops import plugin

    monkeypatch.setenv("VLLM_LYNX_ENABLED", value)
    with pytest.raises(ValueError, match=f"VLLM_LYNX_ENABLED='{value}' is not a recognised value"):
        plugin.register()


@pytest.mark.parametrize("value", ["", "0", "off", "False"])
def test_documented_off_values_leave_vllm_stock(monkeypatch, value):
    from lynx_ops import envs

    monkeypatch.setenv("VLLM_LYNX_ENABLED", value)
    assert envs.VLLM_LYNX_ENABLED is False


def _eager_decode_step(monkeypatch, valid: int) -> None:
    """The forward context of an eager uniform-decode step of `valid` real tokens."""
    import torch
    import vllm.forward_context as fc
    from vllm.config import CUDAGraphMode

    qsl = torch.arange(0, valid + 1, dtype=torch.int32)
    ctx = SimpleNamespace(cudagraph_runtime_mode=CUDAGraphMode.NONE,
                          attn_metadata={"attn": SimpleNamespace(max_query_len=1,
                                                                 query_start_loc=qsl)})  # fmt: skip
    monkeypatch.setattr(fc, "is_forward_context_available", lambda: True)
    monkeypatch.setattr(fc, "get_forward_context", lambda: ctx)


@pytest.mark.parametrize(
    "fields, op",
    [
        ({"kind": "budget", "budget": 20}, "remap_budget"),
        ({"kind": "keep_k0", "k0": 3}, "remap_keep"),
    ],
)
def test_route_runs_the_policy_files_kind(monkeypatch, tmp_path, fields, op):
    """A budget or keep_k0 policy from a policy file reaches its own op on decode steps, with its
    setting (K, k0) read from the layer's device scalar: a new value applies to the next step."""
    import torch

    from lynx_ops.reference import budget_ref, keep_ref
    from tests.helpers import Shape, make_batch

    state = _qwen3_layer(monkeypatch, tmp_path, fields)
    assert state.policy.kind == fields["kind"]
    x, w, ids, _ = make_batch(Shape(128, 8, alpha=3.0, beta=2), 16, seed=3, spread=1.2)
    _eager_decode_step(monkeypatch, 12)  # 12 decode tokens of 16 rows
    n = torch.tensor([12])
    tail = (0, 0, 1.0, 0)
    outputs = []
    for k in (20, 9) if op == "remap_budget" else (3, 5):
        assert int(state.knob) == k
        got_w, got_ids, remapped = layers.route(state, x, w, ids)
        if op == "remap_budget":
            want = budget_ref(x, w, ids, n, None, torch.tensor([k]), 1.0, 0, 3.0, 2, *tail)
        else:
            want = keep_ref(x, w, ids, n, None, torch.tensor([k]), *tail)
        assert remapped and torch.equal(got_ids, want[1]) and torch.equal(got_w, want[0])
        outputs.append(got_ids)
        state.knob.fill_(9 if op == "remap_budget" else 5)
    assert not torch.equal(*outputs)  # the new value changed the routing


def test_route_takes_the_setting_of_the_padded_batch_size(monkeypatch, tmp_path):
    """by_batch: 16 padded rows take the bucket's budget (its own device scalar), 32 the base
    setting, the family's (an entry that sets only by_batch keeps the rest): off above 32 rows at
    Qwen3's 128 x 8, so the router's choice; under a base of bins alpha 4 beta 4, that setting.
    Each equals the reference for its setting."""
    import torch

    from lynx_ops.reference import budget_ref, remap_ref
    from tests.helpers import Shape, make_batch

    state = _qwen3_layer(
        monkeypatch, tmp_path, {"by_batch": [{"max_batch": 16, "kind": "budget", "budget": 12}]}
    )
    assert state.knob is None and len(state.scalars) == 1  # the bucket's scalar only
    for rows, valid in ((16, 12), (32, 30)):
        x, w, ids, _ = make_batch(Shape(128, 8, alpha=3.0, beta=2), rows, seed=rows, spread=1.2)
        _eager_decode_step(monkeypatch, valid)
        got_w, got_ids, remapped = layers.route(state, x, w, ids)
        n = torch.tensor([valid])
        if rows == 16:
            want = budget_ref(x, w, ids, n, None, torch.tensor([12]), 1.0, 0, 4.0, 4, *TAIL)
            assert remapped and torch.equal(got_ids, want[1]) and torch.equal(got_w, want[0])
        else:
            assert not remapped and torch.equal(got_ids, ids) and torch.equal(got_w, w)
    bins = _qwen3_layer(monkeypatch, tmp_path, {"kind": "bins", "by_batch": [
        {"max_batch": 16, "kind": "budget", "budget": 12}]})  # fmt: skip
    x, w, ids, _ = make_batch(Shape(128, 8, alpha=3.0, beta=2), 32, seed=32, spread=1.2)
    _eager_decode_step(monkeypatch, 30)
    got_w, got_ids, remapped = layers.route(bins, x, w, ids)
    want = remap_ref(x, w, ids, torch.tensor([30]), None, 4.0, 4, *TAIL)
    assert remapped and torch.equal(got_ids, want[1]) and torch.equal(got_w, want[0])


@pytest.mark.parametrize("rows", [5, 3])
def test_ceiling_routing_counts_what_its_rows_touch(rows):
    # The benchmark ceiling's ids and counters against sets built row by row; padding rows
    # (past `rows`) are routed but not counted.
    torch = pytest.importorskip("torch")
    gen = torch.Generator().manual_seed(0)
    num_experts, k, ceiling = 16, 3, 6
    topk_ids = torch.stack([torch.randperm(num_experts, generator=gen)[:k] for _ in range(5)])
    topk_ids = topk_ids.to(torch.int32)
    from lynx_ops.bench.ceiling import ceiling_routing

    ids, touched = ceiling_routing(topk_ids, ceiling, torch.tensor([rows]), num_experts)
    chosen = [set(r.tolist()) for r in topk_ids[:rows]]
    used = [{(int(r[0]) + j) % ceiling for j in range(k)} for r in topk_ids[:rows]]
    assert [set(r.tolist()) for r in ids[:rows]] == used and ids.dtype == topk_ids.dtype
    assert touched.dtype == torch.int32
    assert touched.tolist() == [
        len(set().union(*chosen)),
        len(set().union(*used)),
        sum(int(r[0]) in u for r, u in zip(topk_ids[:rows].tolist(), used, strict=True)),
        rows,
        sum(len(u - c) for u, c in zip(used, chosen, strict=True)),
    ]
    assert len(set().union(*used)) <= ceiling
