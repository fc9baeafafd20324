# SPDX-License-Identifier: Apache-2.0
"""vLLM integration: imported only by `lynx_ops.plugin.register()` when VLLM_LYNX_ENABLED=1.

Every point where Lynx touches vLLM, with why and when it can go:

1. `MoERunner.register_oot(LynxMoERunner)` (runner.py): vLLM's own extension point. The subclass
   only extends `__init__` (and, on CPU, `_forward_impl`), so LoRA lookups, isinstance checks and
   the compiled graph stay intact. It wraps the layer's `router._compute_routing` per instance,
   which puts the remap on logical expert ids before routed-expert capture and EPLB mapping.
2. CPU backend only: `cpu_fused_moe.select_experts` is replaced by a wrapper (cpu_routing.py),
   because vLLM's CPU experts route there instead of through the router. It can go when the CPU
   experts call the layer's router.
Both are checked against the vLLM version by compat.py before anything is installed.
"""
