"""The fused reflection loss, per provider, forward and forward + backward.

Providers (bench/providers/loss.py): ours on each backend, the reference formulation (the
baseline), Liger's fused linear CE + a separate KL. Interpreted providers (the Triton ones on
the CPU) run at the profile's toy shapes, with the reference and ours:torch beside them.
"""

from __future__ import annotations

import pytest

from bench.profiles import noisy_on, selected
from bench.providers import loss as L


def _interpreted(provider: str, config) -> bool:
    return provider in ("ours:triton", "liger") and selected(config).device == "cpu"


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "case" not in metafunc.fixturenames:
        return
    prof = selected(metafunc.config)
    cases = []
    for provider in L.providers():
        if _interpreted(provider, metafunc.config):
            shapes = prof.interpreted_loss_shapes
        else:
            shapes = dict.fromkeys(prof.loss_shapes + prof.interpreted_loss_shapes)
        for mode in L.MODES:
            for n, d, v in shapes:
                name = f"{mode}-{provider}-N{n}-D{d}-V{v}-{prof.dtype}"
                # The toy shapes run in milliseconds (or in the interpreter): noisy on a CPU.
                toy = (n, d, v) in prof.interpreted_loss_shapes
                marks = noisy_on(prof) if toy else []
                cases.append(pytest.param((provider, mode, n, d, v), id=name, marks=marks))
    metafunc.parametrize("case", cases)


def test_loss(case, run_bench, device, profile, request) -> None:
    provider, mode, n, d, v = case
    reason = L.unavailable(provider, device)
    if reason:
        pytest.skip(reason)
    x = L.setup_loss(n, d, v, L.DTYPES[profile.dtype], device)
    step = L.make_step(provider, mode, x, device)
    same = L.deterministic(step, x)
    run_bench(
        step,
        rounds=2 if _interpreted(provider, request.config) else None,
        group=f"loss {mode} N={n} D={d} V={v} {profile.dtype}",
        flops=L.useful_flops(mode, n, d, v),
        provider=provider,
        baseline=provider == "reference",
        mode=mode,
        N=n,
        D=d,
        V=v,
        dtype=profile.dtype,
        deterministic=same,
        warm=True,  # the two calls of the determinism check
    )
