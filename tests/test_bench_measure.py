"""The benchmarks' own measurements: extra peak memory of a call, rates, the ratio table."""

from __future__ import annotations

import sys

import pytest
import torch

from bench.providers.common import extra_peak_bytes, rates, release_freed_memory
from bench.report import ratio_table


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self")
def test_extra_peak_is_the_call_s_own_allocation() -> None:
    # 64 MiB touched inside the call and freed: its peak, not what earlier calls left behind.
    release_freed_memory()
    mib = 2**20

    def call() -> None:
        torch.ones(16 * mib, dtype=torch.float32)  # 64 MiB, every page written

    extra_peak_bytes(call, "cpu")  # warm-up
    first = extra_peak_bytes(call, "cpu")
    assert 60 * mib <= first <= 72 * mib, first / mib
    # Freed memory goes back at once, so the next call of the same size reads the same.
    second = extra_peak_bytes(call, "cpu")
    assert abs(second - first) <= 4 * mib, (first / mib, second / mib)
    assert extra_peak_bytes(lambda: None, "cpu") <= 4 * mib


def test_rates_and_peaks() -> None:
    out = rates(0.5, "cpu", flops=1e12, bytes_moved=2e9)
    assert out == {"tflops": 2.0, "gbps": 4.0}  # no card, so no % of peak


def test_ratio_table_against_the_group_baseline() -> None:
    rows = [
        dict(group="g", provider="ref", baseline=True, wall_ms=9.0, cpu_ms=10.0,
             peak_extra_mib=100.0, device="CPU, 2 cores"),
        dict(group="g", provider="ours", wall_ms=1.0, cpu_ms=5.0, peak_extra_mib=25.0,
             device="CPU, 2 cores", tflops=1.5, deterministic=True),
        dict(group="h", provider="alone", wall_ms=1.0, cpu_ms=2.0, peak_extra_mib=None,
             device="CPU, 2 cores"),
    ]  # fmt: skip
    lines = ratio_table(rows).splitlines()
    assert "CPU ms" in lines[0]  # the CPU's clock: process time
    assert lines[2].startswith("| g | ref (baseline) | 10 | 1 | 100.0 | 1 |")
    assert lines[3].startswith("| g | ours | 5 | 0.5 | 25.0 | 0.25 | 1.5 |")
    assert lines[3].endswith("| True |")
    assert lines[4].startswith("| h | alone | 2 | - | - | - |")


def test_ratio_table_names_each_providers_version_and_path() -> None:
    common = dict(group="g", cpu_ms=1.0, wall_ms=1.0, peak_extra_mib=1.0, device="CPU")
    rows = [
        dict(common, provider="torch_lce", version="2.13.0", path="F.linear_cross_entropy",
             settings={"options": None}, kl="ours", quantity="recipe", value_rel_err_fp64=2e-7),
        dict(common, provider="torch_lce", version="2.13.0", path="F.linear_cross_entropy",
             settings={"options": None}, kl="ours", quantity="recipe", value_rel_err_fp64=5e-7),
        dict(common, provider="plain"),
    ]  # fmt: skip
    lines = ratio_table(rows).splitlines()
    assert lines[2].startswith("| g | torch_lce 2.13.0 | 1 |")
    notes = lines[lines.index("Providers:") + 1 :]
    assert notes == [
        "- torch_lce 2.13.0: `F.linear_cross_entropy`; settings {'options': None}; KL: ours; "
        "computes: recipe; loss vs float64: max rel err 5e-07"
    ]
