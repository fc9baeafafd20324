# SPDX-License-Identifier: Apache-2.0
"""Test tiers and shared helpers.

Tiers (markers declared in pyproject.toml): unit tests run everywhere; `interpreter` runs the real
Triton kernel on CPU tensors through TRITON_INTERPRET=1 (set here, before Triton is imported, when no
GPU is present); `cuda` needs a GPU; `vllm_cpu`/`vllm_gpu` start real vLLM.
"""

from __future__ import annotations

import os

import torch

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    # Must happen before `triton.jit` decorates the kernel: it picks interpreter or compiler then.
    os.environ.setdefault("TRITON_INTERPRET", "1")
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
