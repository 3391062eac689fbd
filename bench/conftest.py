"""pytest-benchmark suites of the kernels and the train step: ``pytest bench --benchmark-only``.

Sizes come from a profile (bench/profiles.py; ``--bench-profile``, default ``gpu`` with CUDA,
``cpu`` without). Each row runs its callable untimed (a warm-up, then a call measuring the extra
peak memory), then ``rounds`` timed calls; ``extra_info`` holds the peak extra memory, wall and
CPU-time medians, TF/s or GB/s and, on a known GPU, % of the card's peak. On the CPU the suites
use one thread unless OMP_NUM_THREADS says otherwise, and Triton's interpreter.
``make test`` never collects this folder (pytest.ini: testpaths = tests).
"""

from __future__ import annotations

import os
import statistics
import time

import pytest
import torch

# Triton kernels (ours, Liger's) run in the interpreter on the CPU; set before triton loads.
os.environ.setdefault("TRITON_INTERPRET", "0" if torch.cuda.is_available() else "1")

from bench.profiles import PROFILES, selected  # noqa: E402
from bench.providers.common import (  # noqa: E402
    device_name,
    extra_peak_bytes,
    rates,
    release_freed_memory,
)
from bench.report import ratio_table  # noqa: E402


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--bench-profile",
        default=os.environ.get("RC_BENCH_PROFILE", "auto"),
        choices=["auto", *PROFILES],
        help="benchmark sizes (bench/profiles.py); auto: gpu with CUDA, cpu without",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "noisy: timing varies beyond the regression threshold on a shared CPU"
    )
    if not torch.cuda.is_available():
        release_freed_memory()  # an accurate RSS peak per row, in one process
        if "OMP_NUM_THREADS" not in os.environ:
            torch.set_num_threads(1)


_ROWS = pytest.StashKey[list]()


def pytest_terminal_summary(terminalreporter, config: pytest.Config) -> None:
    rows = config.stash.get(_ROWS, [])
    if rows:
        terminalreporter.write_sep("-", "ratios to each group's baseline, this run")
        terminalreporter.write_line(ratio_table(rows))


@pytest.fixture(scope="session")
def profile(request: pytest.FixtureRequest):
    return selected(request.config)


@pytest.fixture(scope="session")
def device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture
def run_bench(benchmark, profile, device, request):
    """``run_bench(fn, group=..., flops=..., bytes_moved=..., **info)``: time ``fn`` and fill
    ``extra_info``. Rates use the wall time on CUDA and the CPU time on the CPU."""

    def run(fn, *, group: str, flops=None, bytes_moved=None, rounds=None, warm=False, **info):
        """``info`` must name the ``provider``; ``baseline=True`` marks the group's baseline;
        ``warm=True`` when the caller already ran ``fn`` (else one untimed call warms up, so
        one-time allocations of a first call stay out of the memory figure)."""
        benchmark.group = group
        if not warm:
            fn()
        peak = extra_peak_bytes(fn, device)  # untimed: the extra peak memory of one call
        wall, cpu = [], []

        def timed():
            t0, c0 = time.perf_counter(), time.process_time()
            out = fn()
            wall.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
            return out

        benchmark.pedantic(timed, rounds=rounds or profile.rounds, iterations=1)
        wall_s, cpu_s = statistics.median(wall), statistics.median(cpu)
        benchmark.extra_info.update(info)
        benchmark.extra_info.update(
            peak_extra_mib=None if peak is None else round(peak / 2**20, 2),
            wall_ms=round(wall_s * 1e3, 3),
            cpu_ms=round(cpu_s * 1e3, 3),
            device=device_name(device),
            threads=torch.get_num_threads(),
            profile=profile.name,
            **rates(wall_s if device == "cuda" else cpu_s, device, flops, bytes_moved),
        )
        row = dict(benchmark.extra_info, group=group, name=request.node.name)
        request.config.stash.setdefault(_ROWS, []).append(row)
        return benchmark.extra_info

    return run
