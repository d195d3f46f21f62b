"""Benchmarks: whole-pipeline measurements with baselines taken in the same run (see docs/performance.md)."""
