"""Planning, masking and packing one optimizer step (host), per strategy and mask rate, with
the tokens the model then computes per sample against the reference recipe's padded batches."""

from __future__ import annotations

import pytest

from bench.profiles import noisy_on, selected
from bench.providers import packing as P

STRATEGIES = ("block_mask/tce", "random_token_mask")
RATES = (0.5, 1.0)
MAX_TOKENS = 16384
REFERENCE_BATCH = 16
SEED = 3407


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "case" in metafunc.fixturenames:
        marks = noisy_on(selected(metafunc.config))  # numpy + Python, jittery on a shared CPU
        cases = [
            pytest.param((s, r), id=f"{s.replace('/', '-')}-rate{r:g}", marks=marks)
            for s in STRATEGIES
            for r in RATES
        ]
        metafunc.parametrize("case", cases)


@pytest.fixture(scope="module")
def samples(profile):
    return P.setup_packing(profile.packing_samples, SEED)


def test_pack_step(case, samples, run_bench) -> None:
    strategy, rate = case
    batches = P.pack_step(samples, strategy, rate, MAX_TOKENS, SEED)
    ours = sum(b.num_tokens for b in batches)
    lengths = [len(s) for s in samples]
    info = run_bench(
        lambda: P.pack_step(samples, strategy, rate, MAX_TOKENS, SEED),
        group=f"packing {len(samples)} samples, budget {MAX_TOKENS}",
        provider=f"ours {strategy} rate {rate:g}",
        tokens_per_sample=round(ours / len(samples), 1),
        vs_reference_padded=round(ours / P.reference_tokens(lengths, REFERENCE_BATCH, False), 4),
        vs_reference_grouped=round(ours / P.reference_tokens(lengths, REFERENCE_BATCH, True), 4),
        micro_batches=len(batches),
    )
    info["packed_tokens_per_s"] = round(ours / (info["cpu_ms"] * 1e-3))  # host work: CPU time
