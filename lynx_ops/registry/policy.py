# SPDX-License-Identifier: Apache-2.0
"""The validated, frozen Policy: everything `lynx::remap` needs to know about a model family."""

from __future__ import annotations

import dataclasses
import math

from lynx_ops.routing import MAX_BETA, BatchScore, RemapScalars, Scoring, WeightRule

KINDS = ("bins", "budget", "keep_k0", "off")
# What a per-batch-size setting may change: the policy, not the router's facts.
BATCH_FIELDS = ("alpha", "beta", "kind", "budget", "fraction", "batch_score", "k0")


class PolicyError(ValueError):
    """A policy value (from a file, the API or a model config) that cannot apply. The message names
    the field, the value and what is allowed."""


@dataclasses.dataclass(frozen=True)
class Policy:
    """How Lynx remaps one model family's routing.

    alpha: bins are 1/alpha logit units wide (> 0). beta: bins below the top (1..MAX_BETA).
    scoring / weight_rule: see lynx_ops.routing. scale: factor on RENORMALIZE/RAW weights (the
    router's routed_scaling_factor where it applies it). num_expert_group: grouped top-k groups
    (0 = ungrouped). layers: MoE layer indices to remap (None = all). source: where it came from.

    kind (docs/ALGORITHM.md, "Other policies"): `bins`, Lynx's (alpha, beta); `budget`, at most
    `budget` experts a step (0 = no absolute cap), and at most ceil(fraction * the step's vanilla
    union), ranked by `batch_score` (count, or hist with alpha/beta), every row's top-1 kept;
    `keep_k0`, each row keeps its top `k0` and fills the rest from the batch's top-k0 union;
    `off`, vanilla routing without calling the op (for a batch-size bucket where no setting pays
    for the op's own time or stays within an accuracy limit).
    """

    family: str
    alpha: float
    beta: int
    scoring: Scoring = Scoring.SOFTMAX
    weight_rule: WeightRule = WeightRule.RENORMALIZE
    scale: float = 1.0
    num_expert_group: int = 0
    layers: tuple[int, ...] | None = None
    source: str = "builtin"
    kind: str = "bins"
    budget: int = 0
    fraction: float = 1.0
    batch_score: BatchScore = BatchScore.COUNT
    k0: int = 0
    # Settings per decode batch size, given as [{"max_batch": 8, "beta": 4, ...}, ...] ascending
    # (stored as ((max_batch, ((field, value), ...)), ...)); a step of T padded rows uses the first
    # with T <= max_batch, else this policy (for_rows). T is fixed per captured graph, so the
    # choice is made once per graph, never per replay.
    by_batch: tuple = ()

    def __post_init__(self) -> None:
        def bad(field: str, value, allowed: str) -> PolicyError:
            return PolicyError(f"policy '{self.family}': {field}={value!r} invalid; {allowed}")

        if not isinstance(self.family, str) or not self.family:
            raise bad("family", self.family, "a non-empty name is required")
        if (
            isinstance(self.alpha, bool)
            or not isinstance(self.alpha, (int, float))
            or not (math.isfinite(self.alpha) and self.alpha > 0)
        ):
            raise bad("alpha", self.alpha, "allowed: a finite number > 0")
        if (
            isinstance(self.beta, bool)
            or not isinstance(self.beta, int)
            or not (1 <= self.beta <= MAX_BETA)
        ):
            raise bad("beta", self.beta, f"allowed: an integer in [1, {MAX_BETA}]")
        try:
            object.__setattr__(self, "scoring", _enum(Scoring, self.scoring))
        except (KeyError, ValueError):
            raise bad("scoring", self.scoring, f"allowed: {_names(Scoring)}") from None
        try:
            object.__setattr__(self, "weight_rule", _enum(WeightRule, self.weight_rule))
        except (KeyError, ValueError):
            raise bad("weight_rule", self.weight_rule, f"allowed: {_names(WeightRule)}") from None
        if (
            isinstance(self.scale, bool)
            or not isinstance(self.scale, (int, float))
            or not (math.isfinite(self.scale) and self.scale > 0)
        ):
            raise bad("scale", self.scale, "allowed: a finite number > 0")
        if isinstance(self.num_expert_group, bool) or not isinstance(self.num_expert_group, int) \
                or self.num_expert_group < 0:  # fmt: skip
            raise bad("num_expert_group", self.num_expert_group, "allowed: an integer >= 0")
        if self.layers is not None:
            if isinstance(self.layers, (str, bytes)) or not hasattr(self.layers, "__iter__"):
                raise bad(
                    "layers", self.layers, "allowed: null (all) or a list of non-negative integers"
                )
            layers = tuple(self.layers)
            if not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in layers):
                raise bad("layers", self.layers, "allowed: null (all) or non-negative integers")
            object.__setattr__(self, "layers", layers)
        self._check_kind(bad)
        self._check_by_batch(bad)

    def _check_kind(self, bad) -> None:
        if self.kind not in KINDS:
            raise bad("kind", self.kind, f"allowed: {list(KINDS)}")

        def integer(v) -> bool:
            return isinstance(v, int) and not isinstance(v, bool)

        if not integer(self.budget) or self.budget < 0:
            raise bad("budget", self.budget, "allowed: an integer >= 0 (0 = no absolute cap)")
        if isinstance(self.fraction, bool) or not isinstance(self.fraction, (int, float)) \
                or not 0 < self.fraction <= 1:  # fmt: skip
            raise bad("fraction", self.fraction, "allowed: a number in (0, 1]")
        try:
            object.__setattr__(self, "batch_score", _enum(BatchScore, self.batch_score))
        except (KeyError, ValueError):
            raise bad("batch_score", self.batch_score, f"allowed: {_names(BatchScore)}") from None
        if not integer(self.k0) or self.k0 < 0:
            raise bad("k0", self.k0, "allowed: an integer >= 1 for keep_k0")
        if self.kind == "budget" and self.budget == 0 and self.fraction == 1:
            raise bad("budget", self.budget, "a budget policy needs budget >= 1 or fraction < 1")
        if self.kind == "keep_k0" and self.k0 < 1:
            raise bad("k0", self.k0, "a keep_k0 policy needs k0 >= 1 (the experts a row keeps)")

    def _check_by_batch(self, bad) -> None:
        """Normalise by_batch to ((max_batch, ((field, value), ...)), ...) and build each bucket's
        Policy from this one's fields, so a policy file that changes the base changes them too."""
        raw = self.by_batch or ()
        if isinstance(raw, (str, bytes, dict)) or not hasattr(raw, "__iter__"):
            raise bad("by_batch", raw, 'allowed: a list of {"max_batch": N, ...}')
        base = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if f.name not in ("by_batch", "layers")}  # fmt: skip
        norm, variants, last = [], [], 0
        for i, entry in enumerate(raw):
            if isinstance(entry, tuple) and len(entry) == 2:  # normalised already (replace())
                entry = {"max_batch": entry[0], **dict(entry[1])}
            where = f"by_batch[{i}]"
            if not isinstance(entry, dict):
                raise bad(where, entry, 'allowed: an object {"max_batch": N, ...}')
            max_batch = entry.get("max_batch")
            if isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch <= last:
                raise bad(f"{where}.max_batch", max_batch,
                          f"allowed: an integer > {last} (ascending, >= 1)")  # fmt: skip
            fields = {k: v for k, v in entry.items() if k != "max_batch"}
            unknown = sorted(set(fields) - set(BATCH_FIELDS))
            if unknown:
                raise bad(where, sorted(entry), f"unknown field(s) {unknown}; allowed: "
                                                f"{['max_batch', *BATCH_FIELDS]}")  # fmt: skip
            try:
                variant = Policy(**{**base, **fields})
            except PolicyError as e:
                raise PolicyError(str(e).replace(f"policy '{self.family}':",
                                                 f"policy '{self.family}' {where}:")) from None  # fmt: skip
            norm.append((max_batch, tuple(sorted(fields.items()))))
            variants.append((max_batch, variant))
            last = max_batch
        object.__setattr__(self, "by_batch", tuple(norm))
        object.__setattr__(self, "_variants", tuple(variants))

    def for_rows(self, num_rows: int) -> Policy:
        """The setting for a step of `num_rows` padded rows (static per captured graph)."""
        for max_batch, variant in self._variants:
            if num_rows <= max_batch:
                return variant
        return self

    def variants(self) -> list[Policy]:
        """This policy and its per-batch-size settings."""
        return [self, *(v for _, v in self._variants)]

    def applies_to_layer(self, index: int) -> bool:
        return self.layers is None or index in self.layers

    def check_model(self, num_experts: int, top_k: int) -> None:
        """Raise PolicyError if this policy cannot apply to a model with these router shapes."""
        if top_k > num_experts:
            raise PolicyError(f"policy '{self.family}': top_k={top_k} > num_experts={num_experts}")
        if self.kind == "keep_k0" and self.k0 > top_k:
            raise PolicyError(f"policy '{self.family}': k0={self.k0} exceeds the model's "
                              f"top_k={top_k}; allowed: 1..{top_k}")  # fmt: skip
        if self.num_expert_group > 1 and num_experts % self.num_expert_group:
            raise PolicyError(
                f"policy '{self.family}': num_expert_group={self.num_expert_group} does not divide "
                f"num_experts={num_experts}"
            )

    def setting_value(self, num_experts: int) -> int | None:
        """The value of the setting's device scalar (the op reads it on the device, the TPOT
        controller turns it): a budget's K (E where only the fraction caps), keep_k0's k0; None
        for the kinds that take no such scalar."""
        if self.kind == "budget":
            return self.budget or num_experts
        if self.kind == "keep_k0":
            return self.k0
        return None

    def op_args(self) -> RemapScalars:
        """The scalars torch.ops.lynx.remap takes after its tensors, named (schema order)."""
        return RemapScalars(float(self.alpha), self.beta, int(self.scoring), int(self.weight_rule),
                            float(self.scale), self.num_expert_group)  # fmt: skip

    def setting(self) -> str:
        """The setting in words: kind and its parameters."""
        if self.kind == "budget":
            cap = " ".join(([f"K={self.budget}"] if self.budget else [])
                           + ([f"fraction={self.fraction:g}"] if self.fraction < 1 else []))  # fmt: skip
            how = f"budget {cap} by {self.batch_score.name.lower()}"
            if self.batch_score == BatchScore.HIST:
                how += f" (alpha={self.alpha:g} beta={self.beta})"
            return how
        if self.kind == "keep_k0":
            return f"keep_k0 k0={self.k0}"
        if self.kind == "off":
            return "off (vanilla routing)"
        return f"alpha={self.alpha:g} beta={self.beta}"

    def describe(self) -> str:
        groups = f", groups={self.num_expert_group}" if self.num_expert_group > 1 else ""
        layers = "all MoE layers" if self.layers is None else f"layers {list(self.layers)}"
        how = self.setting()
        if self._variants:  # the base setting covers the batches above the last bucket
            sizes = "; ".join(f"B<={b}: {v.setting()}" for b, v in self._variants)
            how = f"by batch size: {sizes}; larger: {how};"
        return (f"{self.family}: {how} "
                f"scoring={self.scoring.name.lower()} weights={self.weight_rule.name.lower()} "
                f"scale={self.scale:g}{groups}, {layers} [{self.source}]")  # fmt: skip


def _enum(cls, value):
    if isinstance(value, cls):
        return value
    if isinstance(value, str):
        return cls[value.upper()]
    if isinstance(value, int) and not isinstance(value, bool):
        return cls(value)
    raise ValueError(value)


def _names(cls) -> list[str]:
    return [m.name.lower() for m in cls]
