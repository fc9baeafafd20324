# SPDX-License-Identifier: Apache-2.0
"""Test tiers and shared helpers.

Tiers (markers declared in pyproject.toml): unit tests run everywhere; `interpreter` runs the real
Triton kernel on CPU tensors through TRITON_INTERPRET=1 (set here, before Triton is imported, when no
GPU is present); `cuda` needs a GPU; `vllm_cpu`/`vllm_gpu` start real vLLM.
"""

from __future__ import annotations

import os
import tempfile

# A private Inductor cache for this test session (engines started by tests inherit it): Inductor's
# FX-graph cache does not key on a custom op's fake implementation, so compiled graphs left by an
# earlier lynx_ops whose op returned other shapes would be reused and fail (seen after `touched`
# grew from [4] to [5]).
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", tempfile.mkdtemp(prefix="lynx-tests-inductor-"))

import torch  # noqa: E402

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    # Must happen before `triton.jit` decorates the kernel: it picks interpreter or compiler then.
    os.environ.setdefault("TRITON_INTERPRET", "1")
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
