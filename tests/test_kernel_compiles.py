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
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from lynx_ops.kernels import policies, remap
scoring, rule, grouped, k, block_e, variant = (int(v) for v in sys.argv[1:])
types = {  # argument name -> type; pointers to partial buffers by their element type
    "x_ptr": "*bf16", "w_ptr": "*fp32", "id_ptr": "*i32", "n_ptr": "*i32", "bias_ptr": "*fp32",
    "out_w_ptr": "*fp32", "out_id_ptr": "*i32", "touched_ptr": "*i32", "counter_ptr": "*i32", "top1_ptr": "*i32", "moved_ptr": "*i32",
    "hist_ptr": "*i64", "kept_ptr": "*i8", "before_ptr": "*i8", "after_ptr": "*i8",
    "alpha": "fp32", "scale": "fp32",
    "budget_ptr": "*i32", "fraction_ptr": "*fp64", "parts_ptr": "*i64", "k0_ptr": "*i32",
}
const = dict(K=k, BETA=2, SCORING=scoring, RULE=rule, GROUPED=bool(grouped), EPS=1e-6,
             BLOCK_T=16, BLOCK_E=block_e, BLOCK_K=triton.next_power_of_2(k), CHUNK=8, VARIANT=variant,
             HIST=bool(rule != 1), SCORE_BITS=38 if rule != 1 else 12)
kernels = (remap._fused_kernel, remap._hist_kernel, remap._vote_kernel, remap._final_kernel,
           policies._keep_kernel, policies._keep_partial_kernel, policies._budget_kernel,
           policies._budget_partial_kernel, policies._budget_final_kernel)
if variant:  # only the bins kernels read the selection variant
    kernels = kernels[:4]
for kernel in kernels:
    names = kernel.arg_names
    sig = {n: "constexpr" if n in const else types.get(n, "i32") for n in names}
    src = ASTSource(fn=kernel, signature=sig,
                    constexprs={(names.index(n),): v for n, v in const.items() if n in names})
    compiled = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": 4})
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
