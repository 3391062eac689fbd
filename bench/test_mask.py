"""The student mask of a micro-batch: the host path (the baseline) and the Triton kernel."""

from __future__ import annotations

import pytest

from bench.profiles import noisy_on, selected
from bench.providers import mask as M

RATE = 0.5


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "case" in metafunc.fixturenames:
        prof = selected(metafunc.config)
        # On a CPU: milliseconds (host) or the interpreter (triton), both noisy there.
        cases = [
            pytest.param((p, s), id=f"{p}-{s}samples", marks=noisy_on(prof))
            for p in M.PROVIDERS
            for s in prof.mask_samples
        ]
        metafunc.parametrize("case", cases)


def test_mask(case, run_bench, device) -> None:
    provider, n_samples = case
    x = M.setup_mask(n_samples, RATE, device="cpu" if provider == "host" else device)
    run_bench(
        M.make_mask_fn(provider, x),
        group=f"mask {n_samples} samples ({x['ids'].numel()} tokens) rate {RATE}",
        bytes_moved=M.bytes_moved(x),
        provider=provider,
        baseline=provider == "host",
        tokens=x["ids"].numel(),
        student_tokens=sum(x["plan"].student_lens),
    )
