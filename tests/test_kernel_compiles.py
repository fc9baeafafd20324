# SPDX-License-Identifier: Apache-2.0
"""The kernel compiles for Hopper (sm_90) with Triton's own compiler, no GPU needed.

The interpreter accepts Python the compiler rejects (non-constexpr globals, dtype mixes), so CI
compiles every constexpr branch down to a cubin with Triton's bundled ptxas as well.
"""

from __future__ import annotations

import pytest
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from lynx_ops.kernels.remap import _lynx_remap_kernel

_SIG = {
    "x_ptr": "*bf16", "sx_t": "i32", "sx_e": "i32", "w_ptr": "*fp32", "sw_t": "i32", "sw_k": "i32",
    "id_ptr": "*i32", "si_t": "i32", "si_k": "i32", "n_ptr": "*i32", "bias_ptr": "*fp32",
    "out_w_ptr": "*fp32", "out_id_ptr": "*i32", "touched_ptr": "*i32", "T": "i32", "E": "i32",
    "alpha": "fp32", "scale": "fp32", "group_size": "i32",
}  # fmt: skip


@pytest.mark.parametrize(
    "scoring,rule,grouped,k,block_e",
    [(0, 0, False, 8, 128), (0, 1, False, 6, 64), (0, 2, False, 3, 8), (1, 1, False, 1, 16),
     (1, 2, False, 5, 64), (2, 0, True, 8, 256)],  # fmt: skip
)
def test_compiles_for_sm90(scoring, rule, grouped, k, block_e):
    const = dict(K=k, BETA=2, SCORING=scoring, RULE=rule, GROUPED=grouped, EPS=1e-6,
                 BLOCK_T=16, BLOCK_E=block_e, BLOCK_K=triton.next_power_of_2(k))  # fmt: skip
    sig = dict(_SIG, **{name: "constexpr" for name in const})
    names = _lynx_remap_kernel.arg_names
    src = ASTSource(fn=_lynx_remap_kernel, signature=sig,
                    constexprs={(names.index(n),): v for n, v in const.items()})  # fmt: skip
    compiled = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": 4})
    assert compiled.asm.get("cubin"), "no cubin produced"
