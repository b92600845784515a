"""Benchmarks run by `avgate bench ...`: side by side in one run, as ratios."""
