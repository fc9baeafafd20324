# SPDX-License-Identifier: Apache-2.0
"""lynx_ops: Lynx batch-aware expert remapping for Mixture-of-Experts decode.

`import lynx_ops` registers `torch.ops.lynx.remap` (no Triton import, no GPU work).
"""

from lynx_ops import ops
from lynx_ops.ops import remap
from lynx_ops.reference import remap_ref
from lynx_ops.routing import MAX_BETA, Scoring, WeightRule

__version__ = "0.2.0"  # 0.2: touched is [4] (adds rows keeping top-1, valid rows)

__all__ = ["MAX_BETA", "Scoring", "WeightRule", "__version__", "ops", "remap", "remap_ref"]
