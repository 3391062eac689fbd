"""Attention over a packed micro-batch: each varlen backend that runs here, and a padded SDPA
batch (the baseline; not the authors' flash_attention_2, which drops the padding), forward and
forward + backward."""

from __future__ import annotations

import pytest

from bench.profiles import selected
from bench.providers import attention as A
from bench.providers.loss import DTYPES


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "case" not in metafunc.fixturenames:
        return
    cases = []
    for seqlens, hq, hkv, dh in selected(metafunc.config).attention:
        for mode in A.MODES:
            for provider in A.providers():
                name = f"{mode}-{provider}-T{sum(seqlens)}-S{len(seqlens)}-H{hq}-{hkv}-D{dh}"
                cases.append(pytest.param((provider, mode, seqlens, hq, hkv, dh), id=name))
    metafunc.parametrize("case", cases)


def test_attention(case, run_bench, device, profile) -> None:
    provider, mode, seqlens, hq, hkv, dh = case
    x = A.setup_attention(list(seqlens), hq, hkv, dh, DTYPES[profile.dtype], device)
    reason = A.unavailable(provider, x)
    if reason:
        pytest.skip(reason)
    run_bench(
        A.make_attention_step(provider, mode, x),
        group=f"attention {mode} T={sum(seqlens)} S={len(seqlens)} Hq={hq} Hkv={hkv} Dh={dh}",
        flops=A.flops(mode, x),
        provider=provider,
        baseline=provider == "padded_sdpa",
        mode=mode,
    )
