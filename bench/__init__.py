"""Benchmarks: scripts that start their own services and print measured figures (see README)."""
