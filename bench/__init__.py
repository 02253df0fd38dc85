"""Benchmarks (speed goals live here, never in tests). Run e.g. `python -m bench.env`."""
