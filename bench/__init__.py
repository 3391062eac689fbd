"""Benchmarks and static GPU checks (run as python -m bench.NAME)."""
