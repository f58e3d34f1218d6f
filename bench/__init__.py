"""Benchmarks: the broker comparison harness (``python -m bench``) and micro-benchmarks."""
