# SPDX-License-Identifier: Apache-2.0
"""Launch configuration for the remap kernel.

Row-block height and warp count, chosen so one row block holds about 4K scores in registers. The
padded row count is bucketed to a power of two (at most 7 compiled variants per expert count), so
small decode batches do not pay for masked rows and large ones do not spill.
"""

from __future__ import annotations

import dataclasses

import triton

_TILE_ELEMENTS = 4096


@dataclasses.dataclass(frozen=True)
class LaunchConfig:
    block_t: int
    num_warps: int


def launch_config(num_rows: int, num_experts: int, k: int) -> LaunchConfig:
    block_e = triton.next_power_of_2(num_experts)
    cap = max(1, _TILE_ELEMENTS // block_e)
    block_t = min(triton.next_power_of_2(max(num_rows, 1)), cap)
    tile = block_t * block_e
    num_warps = 2 if tile <= 512 else 4 if tile <= 2048 else 8
    return LaunchConfig(block_t=block_t, num_warps=num_warps)
