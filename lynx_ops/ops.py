# SPDX-License-Identifier: Apache-2.0
"""Registration of `torch.ops.lynx.*`: schema, input checks, fake and per-device implementations.

torch and NumPy only on purpose: importing this module registers the op cheaply (no Triton import,
no GPU work), so it is in place before any torch.compile trace or CUDA-graph capture. The Triton
launcher is imported lazily inside the CUDA implementation; the CPU one is kernels/cpu.py.

The op is functional (returns new tensors): vLLM only de-functionalises a known list of mutating ops,
and a functional op needs no special handling under torch.compile.
"""

from __future__ import annotations

import math

import torch

from lynx_ops.kernels import cpu as cpu_impl
from lynx_ops.reference import budget_ref, keep_ref, remap_ref
from lynx_ops.routing import (
    MAX_BETA,
    TOUCHED_LEN,
    BatchScore,
    Scoring,
    WeightRule,
    packed_keys_fit,
)

_HEAD = (
    "Tensor scores, Tensor topk_weights, Tensor topk_ids, Tensor num_valid, Tensor? correction_bias"
)
_TAIL = (
    "int scoring, int weight_rule, float scale, int num_expert_group) -> (Tensor, Tensor, Tensor)"
)
# The policy family (docs/ALGORITHM.md): `remap` is Lynx's bins; `remap_budget` keeps at most K
# experts per step; `remap_keep` keeps each row's top-k0. Both read their setting (K, k0) from a
# one-element device tensor, so a new value applies from the next CUDA-graph replay without a new
# capture (the TPOT controller turns it between steps, docs/CONTROLLER.md).
SCHEMA = f"remap({_HEAD}, float alpha, int beta, {_TAIL}"
SCHEMA_BUDGET = (
    f"remap_budget({_HEAD}, Tensor budget, float fraction, int batch_score, float alpha, int beta, "
    f"{_TAIL}"
)
SCHEMA_KEEP = f"remap_keep({_HEAD}, Tensor k0, {_TAIL}"

_FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_ID_DTYPES = (torch.int32, torch.int64)

_lib = torch.library.Library("lynx", "FRAGMENT")
_lib.define(SCHEMA)
_lib.define(SCHEMA_BUDGET)
_lib.define(SCHEMA_KEEP)


def check_remap_inputs(
    scores: torch.Tensor,
    topk_weights: torch.Tensor,
    topk_ids: torch.Tensor,
    num_valid: torch.Tensor,
    correction_bias: torch.Tensor | None,
    alpha: float,
    beta: int,
    scoring: int,
    weight_rule: int,
    scale: float,
    num_expert_group: int,
    op: str = "remap",
) -> None:
    """Raise ValueError naming the argument, the value and what is allowed. Uses metadata only,
    so it runs unchanged on fake tensors while torch.compile traces."""

    def fail(what: str) -> None:
        raise ValueError(f"lynx::{op}: {what}")

    _check_routing(scores, topk_weights, topk_ids, num_valid, correction_bias, scoring,
                   weight_rule, scale, num_expert_group, fail)  # fmt: skip
    _check_bins(alpha, beta, fail)


def check_budget_inputs(scores, topk_weights, topk_ids, num_valid, correction_bias, budget,
                        fraction, batch_score, alpha, beta, scoring, weight_rule, scale,
                        num_expert_group) -> None:  # fmt: skip
    """`lynx::remap_budget`'s checks: the routing tensors as for `remap`, then the budget."""

    def fail(what: str) -> None:
        raise ValueError(f"lynx::remap_budget: {what}")

    _check_routing(scores, topk_weights, topk_ids, num_valid, correction_bias, scoring,
                   weight_rule, scale, num_expert_group, fail)  # fmt: skip
    _check_bins(alpha, beta, fail)
    _check_setting(budget, "budget", "K, the most experts a step keeps; values below 1 act as 1",
                   scores, fail)  # fmt: skip
    if not (isinstance(fraction, (int, float)) and 0 < fraction <= 1):
        fail(f"fraction={fraction} must be in (0, 1]: K is at most ceil(fraction * the step's "
             "vanilla union); 1 leaves K to the budget tensor")  # fmt: skip
    if batch_score not in set(BatchScore):
        allowed = [f"{b.value}={b.name}" for b in BatchScore]
        fail(f"batch_score={batch_score} unknown; allowed: {allowed}")


def check_keep_inputs(scores, topk_weights, topk_ids, num_valid, correction_bias, k0, scoring,
                      weight_rule, scale, num_expert_group) -> None:  # fmt: skip
    """`lynx::remap_keep`'s checks: the routing tensors as for `remap`, then k0."""

    def fail(what: str) -> None:
        raise ValueError(f"lynx::remap_keep: {what}")

    _check_routing(scores, topk_weights, topk_ids, num_valid, correction_bias, scoring,
                   weight_rule, scale, num_expert_group, fail)  # fmt: skip
    _check_setting(k0, "k0", f"the experts each row keeps; values outside [1, "
                   f"k={topk_ids.shape[1]}] act as the nearest end", scores, fail)  # fmt: skip


def _check_one_value(value, name: str, meaning: str, scores, fail) -> None:
    """A one-element int32/int64 tensor (num_valid, a policy's setting). Its value is not read
    here: that would synchronise the host with the GPU; the kernels clamp it instead."""
    if not isinstance(value, torch.Tensor):
        fail(f"{name} must be a one-element int32/int64 tensor on {scores.device} ({meaning}), "
             f"got {type(value).__name__} {value!r}")  # fmt: skip
    if value.numel() != 1 or value.dtype not in _ID_DTYPES:
        fail(f"{name} must hold one int32/int64 value ({meaning}), got shape "
             f"{tuple(value.shape)} dtype {value.dtype}")  # fmt: skip


def _check_setting(value, name: str, meaning: str, scores, fail) -> None:
    """A policy's setting tensor: one int32/int64 value on the scores' device."""
    _check_one_value(value, name, meaning, scores, fail)
    if value.device != scores.device:
        fail(f"{name} must be on {scores.device} with the scores, got {value.device}")


def _check_bins(alpha, beta, fail) -> None:
    if not alpha > 0 or alpha != alpha or alpha == float("inf"):
        fail(f"alpha={alpha} must be a finite number > 0 (bin width is 1/alpha logit units)")
    if not 1 <= beta <= MAX_BETA:
        fail(f"beta={beta} must be an integer in [1, {MAX_BETA}]")


def _check_routing(scores, topk_weights, topk_ids, num_valid, correction_bias, scoring,
                   weight_rule, scale, num_expert_group, fail) -> None:  # fmt: skip
    """The checks every policy of the family shares: the router's tensors and the weight rule."""

    if scores.dim() != 2:
        fail(f"scores must be [T, E], got shape {tuple(scores.shape)}")
    num_rows, num_experts = scores.shape
    if scores.dtype not in _FLOAT_DTYPES:
        fail(f"scores dtype {scores.dtype} not supported; use one of {_FLOAT_DTYPES}")
    if topk_ids.dim() != 2 or topk_ids.shape[0] != num_rows:
        fail(f"topk_ids must be [T={num_rows}, k], got shape {tuple(topk_ids.shape)}")
    k = topk_ids.shape[1]
    if topk_ids.dtype not in _ID_DTYPES:
        fail(f"topk_ids dtype {topk_ids.dtype} not supported; use int32 or int64")
    if tuple(topk_weights.shape) != (num_rows, k):
        fail(f"topk_weights must be [T, k]={num_rows, k}, got {tuple(topk_weights.shape)}")
    if topk_weights.dtype not in _FLOAT_DTYPES:
        fail(f"topk_weights dtype {topk_weights.dtype} not supported; use one of {_FLOAT_DTYPES}")
    if not 1 <= k <= num_experts:
        fail(f"k={k} experts per row must be in [1, E={num_experts}]")
    _check_one_value(num_valid, "num_valid", "the number of valid rows", scores, fail)
    devices = {t.device for t in (scores, topk_weights, topk_ids, num_valid)}
    if correction_bias is not None:
        devices.add(correction_bias.device)
    if len(devices) != 1:
        fail(f"all tensors must be on one device, got {sorted(str(d) for d in devices)}")
    if scoring not in set(Scoring):
        fail(f"scoring={scoring} unknown; allowed: {[f'{s.value}={s.name}' for s in Scoring]}")
    if weight_rule not in set(WeightRule):
        allowed = [f"{r.value}={r.name}" for r in WeightRule]
        fail(f"weight_rule={weight_rule} unknown; allowed: {allowed}")
    if scoring == Scoring.SIGMOID_BIAS:
        if correction_bias is None:
            fail("scoring SIGMOID_BIAS needs correction_bias [E]")
        if tuple(correction_bias.shape) != (num_experts,):
            fail(f"correction_bias must be [E={num_experts}], got {tuple(correction_bias.shape)}")
        if correction_bias.dtype not in _FLOAT_DTYPES:
            fail(f"correction_bias dtype {correction_bias.dtype} not supported")
    elif correction_bias is not None:
        fail(f"correction_bias is only used with scoring SIGMOID_BIAS, got scoring={scoring}")
    if num_expert_group < 0 or (num_expert_group > 1 and num_experts % num_expert_group):
        fail(
            f"num_expert_group={num_expert_group} must be 0/1 (ungrouped) or divide E={num_experts}"
        )
    if not (scale > 0 and math.isfinite(scale)):
        fail(f"scale={scale} must be a finite number > 0")


def _empty_outputs(topk_weights: torch.Tensor, topk_ids: torch.Tensor):
    # Same allocations in the fake and the real implementations (contiguous, vanilla dtypes).
    return (
        topk_weights.new_empty(topk_weights.shape),
        topk_ids.new_empty(topk_ids.shape),
        topk_ids.new_empty((TOUCHED_LEN,), dtype=torch.int32),
    )


def _remap_fake(*args):
    check_remap_inputs(*args)
    return _empty_outputs(args[1], args[2])


def _cpu_impl(check, reference, fast):
    """The CPU implementation of an op: kernels/cpu.py (equal to the reference) where the packed
    keys hold the batch, else the reference."""

    def cpu(*args):
        check(*args)
        if packed_keys_fit(*args[0].shape):
            return fast(*args)
        return _run_ref(reference, args)

    return cpu


def _remap_cuda(*args):
    check_remap_inputs(*args)
    # Beyond the packed keys' bounds the dense reference runs; it is capture-safe too.
    if not packed_keys_fit(*args[0].shape):
        return _run_ref(remap_ref, args)
    from lynx_ops.kernels.remap import remap_triton  # lazy: keeps `import lynx_ops` Triton-free

    return remap_triton(*args)


_lib.impl("remap", _cpu_impl(check_remap_inputs, remap_ref, cpu_impl.remap_cpu), "CPU")
_lib.impl("remap", _remap_cuda, "CUDA")
torch.library.register_fake("lynx::remap", _remap_fake, lib=_lib)


def _policy_impls(check, reference, cpu_fast, launcher_name):
    """Fake, CPU and CUDA implementations of a policy. On CUDA the Triton kernels
    (kernels/policies.py) take batches within the packed keys' bounds; larger ones run the
    reference, which is dense and free of host synchronisation, so it is captured in CUDA graphs
    as it is."""

    def fake(*args):
        check(*args)
        return _empty_outputs(args[1], args[2])

    def cuda(*args):
        check(*args)
        if packed_keys_fit(*args[0].shape):
            from lynx_ops.kernels import policies  # lazy: keeps `import lynx_ops` Triton-free

            return getattr(policies, launcher_name)(*args)
        return _run_ref(reference, args)

    return fake, _cpu_impl(check, reference, cpu_fast), cuda


def _run_ref(reference, args):
    out_w, out_ids, touched = reference(*args)
    return out_w.contiguous(), out_ids.contiguous(), touched


for _name, _check, _ref, _fast, _launcher in (
    ("remap_budget", check_budget_inputs, budget_ref, cpu_impl.budget_cpu, "budget_triton"),
    ("remap_keep", check_keep_inputs, keep_ref, cpu_impl.keep_cpu, "keep_triton"),
):
    _fake, _cpu, _cuda = _policy_impls(_check, _ref, _fast, _launcher)
    _lib.impl(_name, _cpu, "CPU")
    _lib.impl(_name, _cuda, "CUDA")
    torch.library.register_fake(f"lynx::{_name}", _fake, lib=_lib)

remap = torch.ops.lynx.remap.default
remap_budget = torch.ops.lynx.remap_budget.default
remap_keep = torch.ops.lynx.remap_keep.default
