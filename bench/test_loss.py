"""The fused reflection loss against every provider a user could pick instead, forward
(``fwd``), forward + backward (``full``) and forward under no_grad (``eval``).

Providers (bench/providers/loss.py): ours on each backend, the reference formulation (the
baseline), torch's linear_cross_entropy (reference path and chunked), Liger's Triton and Hopper
fused linear CE, Liger's fused linear JSD (beta = 0) distillation loss, QuACK and Cut
Cross-Entropy, each CE-only one plus our KL-only pass. Each row records the provider's version,
code path and settings, and its loss's relative error against float64 of the quantity it
computes (checked: a provider off by more than the dtype's tolerance fails its row). Providers
that need CUDA skip on the CPU with the reason; Triton ones run in the interpreter at the
profile's toy shapes, with the reference and ours:torch beside them.
"""

from __future__ import annotations

import pytest

from bench.profiles import noisy_on, selected
from bench.providers import loss as L


def _interpreted(provider: str, config) -> bool:
    return L.PROVIDERS[provider].interpreted and selected(config).device == "cpu"


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
        ours = provider == "reference" or provider.startswith("ours:")
        modes = L.MODES if ours else prof.other_loss_modes
        for mode in (m for m in modes if m in L.PROVIDERS[provider].modes):
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
    dtype = L.DTYPES[profile.dtype]
    x = L.setup_loss(n, d, v, dtype, device)
    step = L.make_step(provider, mode, x, device)
    same = L.deterministic(step, x)
    err = L.value_error(provider, x, step(), key=(n, d, v, profile.dtype, device))
    assert err <= L.VALUE_TOL[dtype], f"{provider}: loss off float64 by {err:.2e} (relative)"
    case_info = {"provider": provider, "mode": mode, "N": n, "D": d, "V": v, "dtype": profile.dtype}
    run_bench(
        step,
        rounds=2 if _interpreted(provider, request.config) else None,
        group=f"loss {mode} N={n} D={d} V={v} {profile.dtype}",
        flops=L.useful_flops(mode, n, d, v),
        baseline=provider == "reference",
        deterministic=same,
        value_rel_err_fp64=float(f"{err:.3g}"),
        **case_info,
        **L.describe(provider),
        warm=True,  # the calls of the determinism and value checks
    )
