"""Benchmarks: each runs as `python -m bench.<name>` and prints side-by-side ratios measured in one run."""
