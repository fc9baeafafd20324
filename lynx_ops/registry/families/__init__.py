# SPDX-License-Identifier: Apache-2.0
"""Built-in family policies, one module per family. Each module defines FAMILIES: a list of
`Family` entries (names it matches and a builder from the model's HF config)."""

from lynx_ops.registry.families import deepseek, gpt_oss, llama4, mixtral, qwen_moe

BUILTIN = [*qwen_moe.FAMILIES, *mixtral.FAMILIES, *deepseek.FAMILIES, *gpt_oss.FAMILIES,
           *llama4.FAMILIES]  # fmt: skip
