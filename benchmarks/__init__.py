"""Reproducible benchmarks: `python -m benchmarks.NAME [--quick]` (see BENCHMARKS.md).

Each benchmark measures the server and a baseline in the same run, prints a
table, and ends with one JSON line of its figures and whether each goal was met.
"""
