# SPDX-License-Identifier: Apache-2.0
"""Benchmark and engine helpers: router realism for dummy weights, stock-vs-Lynx runs."""
