# SPDX-License-Identifier: Apache-2.0
"""lynx_ops: Lynx batch-aware expert remapping for Mixture-of-Experts decode.

`import lynx_ops` registers `torch.ops.lynx.remap` (no Triton import, no GPU work).
"""

from lynx_ops import ops
from lynx_ops.ops import remap
from lynx_ops.reference import remap_ref
from lynx_ops.routing import MAX_BETA, Scoring, WeightRule

__version__ = "0.3.0"  # 0.3: touched is [5] (adds assignments moved); 0.2: [4]

__all__ = ["MAX_BETA", "Scoring", "WeightRule", "__version__", "ops", "remap", "remap_ref"]
