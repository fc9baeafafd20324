# SPDX-License-Identifier: Apache-2.0
"""vLLM integration: imported only by `lynx_ops.plugin.register()` when VLLM_LYNX_ENABLED=1.

The register of every point where Lynx touches vLLM 0.26 (each checked by compat.py, attribute by
attribute, before anything is installed), with why, how, and what would let it go:

1. `MoERunner.register_oot(LynxMoERunner)` (runner.py): vLLM's own extension point. The subclass
   extends `__init__` (and, on CPU, `_forward_impl`), so LoRA lookups, isinstance checks and the
   compiled graph stay intact.
2. The router instance's `_compute_routing` (runner.wrap_router), rebound per instance in
   `LynxMoERunner.__init__`: `BaseRouter._select_experts` calls it (the family's top-k) and then
   the routed-experts capture, the EPLB logical-to-physical map and the dtype cast, so the remap
   acts on logical ids before all three. Goes when vLLM offers a post-top-k routing hook on the
   router (the router-constructor hooks proposed in vLLM RFC #51005).
3. CPU backend only: `cpu_fused_moe.select_experts` is replaced by a wrapper (cpu_routing.py),
   because vLLM's CPU experts route there instead of through the layer's router. Goes when the
   CPU experts call the router.
4. `vllm.v1.metrics.loggers.load_stat_logger_plugin_factories` (and the name AsyncLLM imported
   from it) is wrapped to add LynxStatLogger, only in processes where the flag is on and metrics
   are enabled (metrics.install_stat_logger). vLLM's `vllm.stat_logger_plugins` entry point would
   be the extension point, but in vLLM 0.26 the mere presence of a stat-logger plugin turns stats
   on (`log_stats = log_stats or has_custom_loggers` in AsyncLLM) and logs the plugin group, so
   an entry point would change stock vLLM with the flag unset (`--disable-log-stats` would stop
   working). Goes when a stat-logger plugin can decline to load (or does not force log_stats).
"""
