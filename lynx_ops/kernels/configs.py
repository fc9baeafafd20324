# SPDX-License-Identifier: Apache-2.0
"""Launch shape for the remap kernels.

Small padded batches run fused: one program holds the whole batch (up to FUSED_TILE scores), one
launch. Larger ones run split: three row-parallel launches over blocks of about SPLIT_TILE scores,
which spreads the rows over the SMs. The constants come from the H100 sweep in
perf/bench_kernel.py (`--sweep`), see perf/results. Padded row counts are bucketed to powers of two,
so the number of compiled variants per expert count stays small.
"""

from __future__ import annotations

import dataclasses

import triton

FUSED_TILE = 4096
SPLIT_TILE = 1024


@dataclasses.dataclass(frozen=True)
class LaunchConfig:
    fused: bool
    block_t: int
    num_warps: int


def _warps(tile: int) -> int:
    return 1 if tile <= 128 else 2 if tile <= 512 else 4 if tile <= 2048 else 8


def fused_config(num_rows: int, num_experts: int) -> LaunchConfig:
    block_t = triton.next_power_of_2(max(num_rows, 1))
    return LaunchConfig(True, block_t, _warps(block_t * triton.next_power_of_2(num_experts)))


def split_config(num_experts: int, tile: int = SPLIT_TILE) -> LaunchConfig:
    block_e = triton.next_power_of_2(num_experts)
    block_t = max(1, tile // block_e)
    return LaunchConfig(False, block_t, _warps(block_t * block_e))


def launch_config(num_rows: int, num_experts: int, k: int) -> LaunchConfig:
    del k  # the selection loops unroll over k; it does not change the tiling
    block_e = triton.next_power_of_2(num_experts)
    if triton.next_power_of_2(max(num_rows, 1)) * block_e <= FUSED_TILE:
        return fused_config(num_rows, num_experts)
    return split_config(num_experts)
