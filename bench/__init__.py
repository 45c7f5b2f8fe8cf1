"""Benchmarks: scripts that report ratios measured in one run (never timed tests)."""
