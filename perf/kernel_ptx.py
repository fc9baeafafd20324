# SPDX-License-Identifier: Apache-2.0
"""Code size and registers of the remap kernels for Hopper, compiled here with no GPU.

    python perf/kernel_ptx.py [--shapes qwen3 deepseek-v2-lite] [--batches 32 256]

For each family shape and batch it takes the launch `kernels/configs.launch_config` picks, compiles
every kernel of that launch for sm_90 with Triton's own compiler, and prints the PTX instruction
count and what Triton's bundled ptxas reports (registers, spills). A kernel whose PTX grows after a
change that should not move it is the first thing to look at when a split launch gets slower on the
GPU (the vote kernel's growth of 0e6716e, up to 3.8x, was found this way). Run it outside
TRITON_INTERPRET, whose kernels do not compile.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# Argument name -> type, for the bins and the policy kernels; pointers to partial buffers by their
# element type; the kernels' scalar arguments not named here are i32.
_TYPES = {
    "x_ptr": "*bf16", "w_ptr": "*fp32", "id_ptr": "*i32", "n_ptr": "*i32", "bias_ptr": "*fp32",
    "out_w_ptr": "*fp32", "out_id_ptr": "*i32", "touched_ptr": "*i32", "counter_ptr": "*i32",
    "top1_ptr": "*i32", "moved_ptr": "*i32", "hist_ptr": "*i64", "kept_ptr": "*i8",
    "before_ptr": "*i8", "after_ptr": "*i8", "alpha": "fp32", "scale": "fp32",
    "budget_ptr": "*i32", "fraction_ptr": "*fp64", "parts_ptr": "*i64", "k0_ptr": "*i32",
}  # fmt: skip


def compile_sm90(kernel, const: dict, num_warps: int):
    """`kernel` compiled for sm_90 by Triton's own compiler, with the constexprs of `const` that it
    takes (tests/test_kernel_compiles.py checks every kernel compiles with it)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    names = kernel.arg_names
    sig = {n: "constexpr" if n in const else _TYPES.get(n, "i32") for n in names}
    src = ASTSource(fn=kernel, signature=sig,
                    constexprs={(names.index(n),): v for n, v in const.items() if n in names})  # fmt: skip
    return triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": num_warps})


def _ptx_size(ptx: str) -> int:
    skip = ("//", ".", "$", "{", "}")
    return sum(1 for line in ptx.splitlines() if line.strip() and not line.strip().startswith(skip))


def _ptxas_report(ptx: str) -> str:
    import triton

    ptxas = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"
    with tempfile.NamedTemporaryFile("w", suffix=".ptx", delete=False) as fh:
        fh.write(ptx)
    try:
        out = subprocess.run([str(ptxas), "-v", "--gpu-name", "sm_90a", fh.name, "-o", os.devnull],
                             capture_output=True, text=True, check=False)  # fmt: skip
    finally:
        os.unlink(fh.name)
    keep = [ln.split("info    :")[-1].strip() for ln in out.stderr.splitlines()
            if "Used" in ln or "spill" in ln]  # fmt: skip
    return "; ".join(keep) or out.stderr.strip()[-200:]


def main() -> None:
    if os.environ.get("TRITON_INTERPRET") == "1":
        sys.exit("kernel_ptx.py compiles the kernels: run it without TRITON_INTERPRET=1")
    import triton

    from lynx_ops.kernels import remap
    from lynx_ops.kernels.configs import launch_config
    from perf.bench_kernel import SHAPES

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shapes", nargs="*", default=["qwen3", "deepseek-v2-lite", "qwen1.5"],
                    help="family shape name prefixes (perf/bench_kernel.py's SHAPES)")  # fmt: skip
    ap.add_argument("--batches", type=int, nargs="*", default=[1, 32, 256])
    args = ap.parse_args()
    print(f"triton {triton.__version__}, sm_90; PTX instructions and ptxas -v per kernel")
    for name, shape in SHAPES.items():
        if not any(name.startswith(s) for s in args.shapes):
            continue
        for T in args.batches:
            cfg = launch_config(T, shape.E, shape.k)
            kernels = ([remap._fused_kernel] if cfg.fused else
                       [remap._hist_kernel, remap._vote_kernel, remap._final_kernel])  # fmt: skip
            const = dict(K=shape.k, BETA=shape.beta, SCORING=int(shape.scoring),
                         RULE=int(shape.rule), GROUPED=shape.groups > 1, EPS=1e-6,
                         BLOCK_T=cfg.block_t, BLOCK_E=triton.next_power_of_2(shape.E),
                         BLOCK_K=triton.next_power_of_2(shape.k), CHUNK=8,
                         VARIANT=cfg.variant)  # fmt: skip
            for kernel in kernels:
                ptx = compile_sm90(kernel, const, cfg.num_warps).asm["ptx"]
                print(f"{name:28s} T={T:4d} {'fused' if cfg.fused else 'split'} "
                      f"block_t={cfg.block_t:3d} warps={cfg.num_warps} v{cfg.variant} "
                      f"{kernel.fn.__name__:14s} ptx {_ptx_size(ptx):5d}  {_ptxas_report(ptx)}",
                      flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
