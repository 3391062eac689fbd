"""Benchmark providers: the inputs and the callables of each benchmark, shared by the
pytest-benchmark suites (bench/test_*.py), the standalone reports (bench/bench_*.py) and the
GPU suite (bench/gpu_suite.py), so all three time the same code.

Each module offers ``setup_*`` (the inputs of one point, on a device) and a function returning
the callable of a provider at that point; ``common`` measures (memory, device, peaks).
"""
