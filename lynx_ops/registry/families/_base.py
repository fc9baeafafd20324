# SPDX-License-Identifier: Apache-2.0
"""What a family module provides, and config helpers."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from lynx_ops.registry.policy import Policy


@dataclasses.dataclass(frozen=True)
class Family:
    name: str
    model_types: tuple[str, ...]
    architectures: tuple[str, ...]
    build: Callable[[Any], Policy]  # HF config -> Policy
    note: str = ""


def cfg(config: Any, *names: str, default: Any = None) -> Any:
    """First present attribute (or key) of `config` among `names`; looks into `text_config` too
    (multimodal wrappers such as Llama 4 keep the MoE settings there)."""
    for source in (config, _get(config, "text_config")):
        if source is None:
            continue
        for name in names:
            value = _get(source, name)
            if value is not None:
                return value
    return default


def _get(obj: Any, name: str) -> Any:
    if isinstance(obj, dict):
        return obj.get(name)
    return getattr(obj, name, None)
