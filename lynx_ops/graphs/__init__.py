# SPDX-License-Identifier: Apache-2.0
"""When Lynx may act: uniform-decode detection that CUDA-graph replay respects."""
