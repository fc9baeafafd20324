# SPDX-License-Identifier: Apache-2.0
"""The kernels (bins and the policies) compile for Hopper (sm_90) with Triton's own compiler, no GPU needed.

The interpreter accepts Python the compiler rejects (non-constexpr globals, dtype mixes), so CI also
compiles every constexpr branch down to a cubin with Triton's bundled ptxas. It runs in a fresh
interpreter because this test session imported the kernel under TRITON_INTERPRET=1.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

_SCRIPT = r"""
import sys, triton
from lynx_ops.kernels import policies, remap
from perf.kernel_ptx import compile_sm90  # the argument types of every kernel, and the compile
scoring, rule, grouped, k, block_e, variant = (int(v) for v in sys.argv[1:])
const = dict(K=k, BETA=2, SCORING=scoring, RULE=rule, GROUPED=bool(grouped), EPS=1e-6,
             BLOCK_T=16, BLOCK_E=block_e, BLOCK_K=triton.next_power_of_2(k), CHUNK=8, VARIANT=variant,
             HIST=bool(rule != 1), SCORE_BITS=38 if rule != 1 else 12)
kernels = (remap._fused_kernel, remap._hist_kernel, remap._vote_kernel, remap._final_kernel,
           policies._keep_kernel, policies._keep_partial_kernel, policies._budget_kernel,
           policies._budget_partial_kernel, policies._budget_final_kernel)
if variant:  # only the bins kernels read the selection variant
    kernels = kernels[:4]
for kernel in kernels:
    compiled = compile_sm90(kernel, const, num_warps=4)
    assert compiled.asm.get("cubin"), f"no cubin for {kernel.fn.__name__}"
print("ok")
"""


@pytest.mark.parametrize(
    "scoring,rule,grouped,k,block_e,variant",
    [
        (0, 0, 0, 8, 128, 0),
        (0, 1, 0, 6, 64, 0),
        (0, 2, 0, 3, 8, 0),
        (1, 1, 0, 1, 16, 0),
        (1, 2, 0, 5, 64, 0),
        (2, 0, 1, 8, 256, 0),
        # selection variant 1, which split launches use (kernels/configs.py)
        (0, 0, 0, 8, 128, 1),
        (0, 1, 0, 6, 64, 1),
        (2, 0, 1, 8, 256, 1),
    ],  # fmt: skip
)
def test_compiles_for_sm90(scoring, rule, grouped, k, block_e, variant):
    env = {key: v for key, v in os.environ.items() if key != "TRITON_INTERPRET"}
    root = Path(__file__).resolve().parents[1]
    env["PYTHONPATH"] = str(root) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run(
        [sys.executable, "-c", _SCRIPT, *map(str, (scoring, rule, grouped, k, block_e, variant))],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-3000:]
