"""Plain, slow, float64 references written straight from SPEC.md, one module per op.

Tests and benchmarks import them from here; nothing in the package imports them.
"""
