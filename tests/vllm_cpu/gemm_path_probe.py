# SPDX-License-Identifier: Apache-2.0
"""Probe for test_router_realism, in the engine process (lynx_ops.bench.engine_job).

`install()` (before the engine is built) forces vLLM's unpacked CPU GEMM path when
LYNX_TEST_CPU_GEMM=unpacked: vLLM has no switch for it, so the probe clears the oneDNN capability
flag that `dispatch_cpu_unquantized_gemm` consults, and linear layers keep `layer.weight` and run
torch.nn.functional.linear. Otherwise vLLM picks its own path (oneDNN on x86 builds, or AMX).

`gate_report(worker)` (collective_rpc, after loading) says which path the gates took and measures
the router logits the way the model computes them: each gate's own forward (packed or not) on
random unit-RMS inputs, the input the re-draw assumes. Then it tries the after-load fallback
(`router_realism.rescale_gates`, spread 4) and measures again.
"""

from __future__ import annotations

import os

SPREAD_AFTER_LOAD = 4.0


def install() -> None:
    if os.environ.get("LYNX_TEST_CPU_GEMM") == "unpacked":
        from vllm import _custom_ops

        _custom_ops._supports_onednn = False


def _logit_std(gates) -> float:
    import torch

    stds = []
    gen = torch.Generator().manual_seed(0)
    for gate in gates:
        dim = gate.input_size
        h = torch.randn(256, dim, generator=gen)
        h = h / h.pow(2).mean(-1, keepdim=True).sqrt()  # unit RMS, as after the RMSNorm
        out = gate(h.to(gate.params_dtype))
        logits = out[0] if isinstance(out, tuple) else out
        stds.append(logits.float().std(dim=-1).mean().item())
    return sum(stds) / len(stds)


def gate_report(worker) -> dict:
    import torch

    from lynx_ops.bench import router_realism

    model = router_realism._model(worker)
    gates = [gate for _, gate, _ in router_realism._gate_candidates(model)]
    report = {"gates": len(gates), "weight_numel": [int(g.weight.numel()) for g in gates]}
    with torch.no_grad():
        report["logit_std"] = _logit_std(gates)
        try:
            router_realism.rescale_gates(worker, SPREAD_AFTER_LOAD, 0.0, 1)
            report["after_load_logit_std"] = _logit_std(gates)
        except RuntimeError as e:
            report["after_load_error"] = str(e)
    return report
