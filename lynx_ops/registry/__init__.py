# SPDX-License-Identifier: Apache-2.0
"""Policy registry: which Lynx policy applies to a model, and why.

Order of precedence for a model (matched by HF `model_type`, then by `architectures`):
  1. an entry of the user policy file (VLLM_LYNX_CONFIG_FILE, or the `config_file` argument);
  2. a family registered through `register_policy`;
  3. a built-in family (registry/families/);
  4. the fallback derived from k/E, for any other MoE config that names its experts and top-k.
A policy file entry for a known family overrides only the fields it sets.
"""

from __future__ import annotations

import dataclasses
import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lynx_ops.registry.families import BUILTIN
from lynx_ops.registry.families._base import Family, cfg
from lynx_ops.registry.policy import BATCH_FIELDS, Policy, PolicyError

__all__ = ["POLICY_FIELDS", "Policy", "PolicyError", "check_overrides", "Selection", "fallback_policy", "load_policy_file",
           "register_policy", "router_shape", "select_policy", "supported_families"]  # fmt: skip

_LOCK = threading.Lock()
_USER_FAMILIES: dict[str, Family] = {}
# k/E at or above this is a "few experts" model (Mixtral's 2/8); below it, Qwen3/GPT-OSS-like.
FEW_EXPERTS_SPARSITY = 0.2


@dataclasses.dataclass(frozen=True)
class Selection:
    """The outcome for one model: a policy, or None with the reason Lynx stays off."""

    policy: Policy | None
    reason: str


def router_shape(config: Any) -> tuple[int | None, int | None]:
    """(num_experts, top_k) from an HF config, under the names the supported families use."""
    num_experts = cfg(config, "num_experts", "num_local_experts", "n_routed_experts")
    top_k = cfg(config, "num_experts_per_tok", "experts_per_token", "moe_topk")
    return (int(num_experts) if num_experts else None, int(top_k) if top_k else None)


def fallback_policy(num_experts: int, top_k: int, config: Any = None) -> Policy:
    """Policy for a MoE family with no entry, from its sparsity k/E.

    The authors' defaults group by sparsity: k/E < 0.2 (Qwen3 8/128, GPT-OSS 4/128, Qwen2 8/64)
    used alpha=3, beta=2; few-expert models (Mixtral 2/8) used alpha~1, beta=1. Scoring and weight
    rule follow the config's `scoring_func` and `norm_topk_prob` (softmax, renormalised if absent).
    """
    from lynx_ops.routing import Scoring, WeightRule

    if not 1 <= top_k <= num_experts:
        raise PolicyError(f"fallback: top_k={top_k} must be in [1, num_experts={num_experts}]")
    few = top_k / num_experts >= FEW_EXPERTS_SPARSITY
    sigmoid = config is not None and cfg(config, "scoring_func", default="softmax") == "sigmoid"
    norm = True if config is None else bool(cfg(config, "norm_topk_prob", default=True))
    return Policy(
        "fallback",
        alpha=1.0 if few else 3.0,
        beta=1 if few else 2,
        scoring=Scoring.SIGMOID if sigmoid else Scoring.SOFTMAX,
        weight_rule=WeightRule.RENORMALIZE if norm else WeightRule.PRESERVE_MASS,
        source=f"fallback k/E={top_k}/{num_experts}",
    )


def register_policy(
    name: str,
    policy: Policy | Callable[[Any], Policy],
    *,
    model_types: tuple[str, ...] | list[str] = (),
    architectures: tuple[str, ...] | list[str] = (),
) -> None:
    """Register (or replace) a family: a fixed Policy or a builder `hf_config -> Policy`, matched
    by HF `model_type` and/or `architectures`. Takes precedence over built-in families."""
    if not model_types and not architectures:
        raise PolicyError(f"register_policy('{name}'): give model_types and/or architectures")
    if isinstance(policy, Policy):
        fixed = dataclasses.replace(policy, source=f"api:{name}")
        build = lambda _config, p=fixed: p  # noqa: E731
    elif callable(policy):
        build = policy
    else:
        raise PolicyError(f"register_policy('{name}'): policy must be a Policy or a callable")
    with _LOCK:
        _USER_FAMILIES[name] = Family(name, tuple(model_types), tuple(architectures), build)


def supported_families() -> list[Family]:
    with _LOCK:
        return [*_USER_FAMILIES.values(), *BUILTIN]


_FILE_MATCH_KEYS = ("model_type", "architecture")
# The Policy fields a policy file entry (or a frontier setting) may set.
POLICY_FIELDS = ("alpha", "beta", "scoring", "weight_rule", "scale", "num_expert_group", "layers",
                 "kind", "budget", "fraction", "batch_score", "k0", "by_batch")  # fmt: skip


@dataclasses.dataclass(frozen=True)
class _FileEntry:
    model_type: str | None
    architecture: str | None
    overrides: dict
    where: str


MAX_POLICY_FILE_BYTES = 1 << 20  # a policy file is a few hundred bytes


def check_overrides(raw: dict, where: str, also_allowed: tuple[str, ...] = ()) -> dict:
    """The Policy fields of `raw` (a policy-file entry, a frontier setting), checked against a
    neutral base; PolicyError names `where`, the field, the value and what is allowed. Keys other
    than the Policy fields and `also_allowed` are refused."""
    unknown = set(raw) - set(also_allowed) - set(POLICY_FIELDS)
    if unknown:
        raise PolicyError(f"{where}: unknown field(s) {sorted(unknown)}; allowed: "
                          f"{list(also_allowed + POLICY_FIELDS)}")  # fmt: skip
    overrides = {k: raw[k] for k in POLICY_FIELDS if k in raw}
    try:
        Policy(where, **{"alpha": 1.0, "beta": 1, **overrides})
    except PolicyError as e:
        raise PolicyError(str(e).replace(f"policy '{where}'", where)) from None
    except TypeError as e:
        raise PolicyError(f"{where}: {e}") from None
    return overrides


def load_policy_file(path: str | Path) -> list[_FileEntry]:
    """Parse and validate a policy file; raise PolicyError naming the file, the entry, the field,
    the value and what is allowed. Format (docs/MODELS.md):
        {"policies": [{"model_type": "qwen3_moe", "alpha": 1.0, "beta": 2}, ...]}
    """
    path = Path(path)
    try:
        # A regular file only: a FIFO or a device would block startup or never end.
        if path.exists() and not path.is_file():
            raise PolicyError(f"policy file {path}: not a regular file")
        if path.is_file() and path.stat().st_size > MAX_POLICY_FILE_BYTES:
            raise PolicyError(f"policy file {path}: larger than {MAX_POLICY_FILE_BYTES} bytes")
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise PolicyError(f"policy file {path}: not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise PolicyError(f"policy file {path}: cannot be read ({e})") from None
    except json.JSONDecodeError as e:
        raise PolicyError(f"policy file {path}: not valid JSON ({e})") from None
    except RecursionError:
        raise PolicyError(f"policy file {path}: nested too deeply to be a policy file") from None
    if (
        not isinstance(data, dict)
        or set(data) != {"policies"}
        or not isinstance(data["policies"], list)
    ):
        raise PolicyError(f'policy file {path}: expected {{"policies": [ ... ]}} at the top level')
    entries = []
    for i, raw in enumerate(data["policies"]):
        where = f"policy file {path}, policies[{i}]"
        if not isinstance(raw, dict):
            raise PolicyError(f"{where}: each entry must be an object, got {raw!r}")
        overrides = check_overrides(raw, where, also_allowed=_FILE_MATCH_KEYS)
        matches = [k for k in _FILE_MATCH_KEYS if k in raw]
        if len(matches) != 1 or not isinstance(raw[matches[0]], str) or not raw[matches[0]]:
            raise PolicyError(f"{where}: needs exactly one of {list(_FILE_MATCH_KEYS)} (a name)")
        entries.append(_FileEntry(raw.get("model_type"), raw.get("architecture"), overrides,
                                  where))  # fmt: skip
    return entries


def _names(config: Any) -> tuple[str | None, list[str]]:
    model_type = cfg(config, "model_type")
    archs = cfg(config, "architectures", default=None) or []
    return model_type, list(archs)


def _matches(model_type, archs, types, arch_names) -> bool:
    return (model_type is not None and model_type in types) or any(a in arch_names for a in archs)


_FROM_ENV = object()
_LOGGED: set[str] = set()


def _log_once(key: str, msg: str, *args: Any) -> None:
    import logging

    with _LOCK:
        if key in _LOGGED:
            return
        _LOGGED.add(key)
    logging.getLogger("lynx_ops").warning("[lynx] " + msg, *args)


def _check_layers(policy: Policy, config: Any, label: str) -> None:
    """An explicit `layers` list must name layers the model has: a policy that covers none would
    leave Lynx acting nowhere, silently."""
    if policy.layers is None:
        return
    if not policy.layers:
        raise PolicyError(f"{policy.source}: layers=[] covers no layer; omit 'layers' for all MoE "
                          "layers or name some")  # fmt: skip
    depth = cfg(config, "num_hidden_layers", default=None)
    if depth is None:
        return
    missing = sorted(i for i in policy.layers if i >= int(depth))
    if missing:
        raise PolicyError(f"{policy.source}: layers {missing} are not layers of this model "
                          f"({label} has {depth} decoder layers, 0-{int(depth) - 1})")  # fmt: skip
    moe = moe_layers(config, int(depth))
    if moe is not None and not set(policy.layers) & moe:
        raise PolicyError(f"{policy.source}: layers {sorted(policy.layers)} are all dense (no MoE "
                          f"block) in {label}, so Lynx would act nowhere; its MoE layers are "
                          f"{format_ranges(sorted(moe))}")  # fmt: skip
    dense = sorted(set(policy.layers) - moe) if moe is not None else []
    if dense:
        _log_once(f"dense#{policy.source}#{label}",
                  "%s: layers %s are dense in %s and stay stock; Lynx covers %s", policy.source,
                  dense, label, sorted(set(policy.layers) & moe))  # fmt: skip


def moe_layers(config: Any, depth: int) -> set[int] | None:
    """The decoder layers with an MoE block, by the rules vLLM's model code applies (Qwen2/3-MoE:
    decoder_sparse_step and mlp_only_layers; DeepSeek V2/V3: first_k_dense_replace and
    moe_layer_freq; Llama 4: interleave_moe_layer_step); None where the config has none of
    them (every layer then counts as MoE, as in Mixtral)."""
    sparse_step = cfg(config, "decoder_sparse_step", default=None)
    mlp_only = cfg(config, "mlp_only_layers", default=None) or []
    first_dense = cfg(config, "first_k_dense_replace", default=None)
    interleave = cfg(config, "interleave_moe_layer_step", default=None)
    if sparse_step is None and not mlp_only and first_dense is None and interleave is None:
        return None
    layers = set(range(depth))
    if sparse_step:
        layers = {i for i in layers if (i + 1) % int(sparse_step) == 0}
    layers -= {int(i) for i in mlp_only}
    if first_dense is not None:
        freq = int(cfg(config, "moe_layer_freq", default=1) or 1)
        layers = {i for i in layers if i >= int(first_dense) and i % freq == 0}
    if interleave:
        layers = {i for i in layers if (i + 1) % int(interleave) == 0}
    return layers


def format_ranges(values: list[int]) -> str:
    """Sorted layer numbers as ranges: [0, 1, 2, 5, 7, 8] -> "0-2,5,7-8"."""
    out, start = [], None
    for i, v in enumerate(values):
        if start is None:
            start = v
        if i + 1 == len(values) or values[i + 1] != v + 1:
            out.append(f"{start}" if start == v else f"{start}-{v}")
            start = None
    return ",".join(out) or "none"


def select_policy(config: Any, config_file: Any = _FROM_ENV) -> Selection:
    """The policy for a model's HF config (object or dict); `config_file` defaults to
    VLLM_LYNX_CONFIG_FILE. Raises PolicyError for a policy file or
    registered builder that cannot apply (explicit requests fail loudly, at startup); returns
    Selection(None, reason) when nothing applies, so the caller can stay stock and say why."""
    if config_file is _FROM_ENV:
        from lynx_ops import envs

        config_file = envs.VLLM_LYNX_CONFIG_FILE
    model_type, archs = _names(config)
    num_experts, top_k = router_shape(config)
    label = model_type or (archs[0] if archs else "<unknown model>")

    base: Policy | None = None
    for family in supported_families():
        if _matches(model_type, archs, family.model_types, family.architectures):
            base = family.build(config)
            break
    if base is None and num_experts and top_k and num_experts > 1:
        base = fallback_policy(num_experts, top_k, config)

    if config_file is not None:
        entries = load_policy_file(config_file)
        for entry in entries:
            if _matches(model_type, archs, (entry.model_type,), (entry.architecture,)):
                start = base or Policy(label, alpha=1.0, beta=1)
                overrides = dict(entry.overrides)
                if set(overrides) & set(BATCH_FIELDS) and "by_batch" not in overrides:
                    # an entry that sets the routing sets it at every batch size: the family's
                    # own per-batch settings go with the rest of its setting
                    overrides["by_batch"] = ()
                if set(overrides) & set(BATCH_FIELDS) and start.kind == "off":
                    # ... and a family off at some batch sizes turns on: alpha=1 means bins
                    overrides.setdefault("kind", "bins")
                try:
                    base = dataclasses.replace(start, **overrides, source=entry.where)
                except PolicyError as e:
                    raise PolicyError(f"{entry.where}: {e}") from None
                break
        else:
            if entries:
                _log_once(f"{config_file}#{model_type}#{archs}",
                          "policy file %s: no entry matches this model (model_type=%s, "
                          "architectures=%s); its entries name %s", config_file, model_type, archs,
                          [e.model_type or e.architecture for e in entries])  # fmt: skip

    if base is None:
        return Selection(None, f"{label}: not a recognised MoE config (no experts/top-k found)")
    _check_layers(base, config, label)
    if num_experts and top_k:
        for variant in base.variants():  # the per-batch-size settings too, at startup
            variant.check_model(num_experts, top_k)
        if top_k == num_experts:
            return Selection(
                None, f"{label}: every expert is active (k=E={top_k}); nothing to remap"
            )
    return Selection(base, base.describe())
