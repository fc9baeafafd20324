# SPDX-License-Identifier: Apache-2.0
"""Launch shape for the remap kernels.

Small padded batches run fused: one program holds the whole batch (up to FUSED_TILE scores), one
launch. Larger ones run split: three row-parallel launches over blocks of SPLIT_TILE_MIN to
SPLIT_TILE_MAX scores, sized so that about SPLIT_BLOCKS blocks share the batch. Padded row counts
are bucketed to powers of two, so the number of compiled variants per expert count stays small.

The constants come from the H100 sweep (`perf/bench_kernel.py --sweep`,
perf/results/kernel_sweep_h100.csv; qwen3-moe, qwen2-moe and qwen1.5-moe shapes):
- fused wins up to 1024 padded scores (E=128: T<=8; E=64: T<=16) and loses from 2048 on (E=128,
  T=32: fused 31.8 us, split 14.1 us), since one program walks the batch serially;
- the best split tile grows with the batch: 256 at E=128 T=32, 512 at T=128, 1024 at T>=256,
  i.e. about 32 blocks until the 1024-score tile; larger tiles were slower everywhere.

From the H200 sweeps (perf/results/kernel_sweep_h200_d534612.csv, Qwen3 shape;
kernel_sweep_h200_0fa2eaf_dsv2lite_qwen15.csv, DeepSeek-V2-Lite E=64 k=6 and Qwen1.5 E=60 k=4;
T = 1, 32, 256, median of 20 graph replays): from 256 padded rows on, 64-expert shapes take the
1024-score tile (LARGE_BATCH_ROWS) where the 32-block rule gave 512: Qwen1.5 T=256 17.9 against
23.9 us, DeepSeek-V2-Lite 17.1 against 22.0 (variant 1: 15.8 against 22.6, 16.4 against 19.6).
128 experts and more reached that tile already; under 64 experts it was not measured, so those
keep the rule. The policy kernels (kernels/policies.py) share the tiling; their split launches at
64 experts and T >= 256 were not swept.

Selection variant 1 (one key per pick) was faster than variant 0 on 17 of 18 split cells of those
sweeps, but both sweeps ran a vote kernel that Triton compiled to up to 3.8x its PTX (the partials'
loop after the block load, 0e6716e; fixed in kernels/remap.py), and variant 0's kernel had grown
most. So split launches stay on variant 0 (SPLIT_VARIANT), whose fixed vote kernel compiles to
as much PTX as 3a17772's timed one (`perf/kernel_ptx.py`;
perf/results/kernel_ptx_sm90_vote_regression.log), until a sweep of the fixed kernels compares
the two.
"""

from __future__ import annotations

import dataclasses

import triton

FUSED_TILE = 1024
SPLIT_TILE_MIN = 256
SPLIT_TILE_MAX = 1024
SPLIT_BLOCKS = 32
SPLIT_VARIANT = 0
LARGE_BATCH_ROWS = 256


@dataclasses.dataclass(frozen=True)
class LaunchConfig:
    fused: bool
    block_t: int
    num_warps: int
    # How the k candidates of a row are picked (kernels/remap.py, _block_kept): 0 two keys with
    # two row reductions per pick; 1 one key (the histogram's rank) with one reduction per pick.
    # Both are exact and tested; launch_config gives split launches SPLIT_VARIANT and fused ones
    # 0 (the module's docstring says why). A third, one bitonic top-k (tl.topk) for all k
    # picks, was exact in the interpreter but not on the H200 (Triton 3.6: duplicate ids in 2 of
    # 12 family shapes at T=1, and no compile at k=1), so it was removed.
    variant: int = 0

    def __post_init__(self):
        if self.variant not in (0, 1):
            raise ValueError(f"LaunchConfig.variant must be 0 or 1, got {self.variant!r}")


def _warps(tile: int) -> int:
    return 1 if tile <= 128 else 2 if tile <= 512 else 4 if tile <= 2048 else 8


def fused_config(num_rows: int, num_experts: int) -> LaunchConfig:
    block_t = triton.next_power_of_2(max(num_rows, 1))
    return LaunchConfig(True, block_t, _warps(block_t * triton.next_power_of_2(num_experts)))


def split_tile(num_rows: int, num_experts: int) -> int:
    """Scores per split block: about SPLIT_BLOCKS blocks, within [SPLIT_TILE_MIN, SPLIT_TILE_MAX]."""
    rows, block_e = triton.next_power_of_2(max(num_rows, 1)), triton.next_power_of_2(num_experts)
    if rows >= LARGE_BATCH_ROWS and block_e >= 64:
        return SPLIT_TILE_MAX
    return min(SPLIT_TILE_MAX, max(SPLIT_TILE_MIN, rows * block_e // SPLIT_BLOCKS))


def split_config(num_experts: int, tile: int = SPLIT_TILE_MAX) -> LaunchConfig:
    block_e = triton.next_power_of_2(num_experts)
    block_t = max(1, tile // block_e)
    return LaunchConfig(False, block_t, _warps(block_t * block_e))


def launch_config(num_rows: int, num_experts: int, k: int) -> LaunchConfig:
    del k  # the selection loops unroll over k; it does not change the tiling
    block_e = triton.next_power_of_2(num_experts)
    if triton.next_power_of_2(max(num_rows, 1)) * block_e <= FUSED_TILE:
        return fused_config(num_rows, num_experts)
    split = split_config(num_experts, split_tile(num_rows, num_experts))
    return dataclasses.replace(split, variant=SPLIT_VARIANT)
