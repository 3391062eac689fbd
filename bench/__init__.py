"""Benchmarks and static GPU checks (run as python -m bench.NAME)."""

from pathlib import Path

# Where the reports write by default, wherever they are started from.
RESULTS = Path(__file__).resolve().parent / "results"
