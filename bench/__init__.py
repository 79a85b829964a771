"""Benchmarks: each measures meshnet and its anchor side by side in one run (a ratio)."""
