"""One optimizer step end to end: ours (packed, varlen attention, fused loss) against the
reference recipe (the baseline), on the same model, samples and mask."""

from __future__ import annotations

import pytest

from bench.providers import train_step as T


@pytest.mark.parametrize("provider", T.PROVIDERS)
def test_train_step(provider, run_bench, device, profile) -> None:
    cfg = T.TrainStepConfig(**profile.train_step, device=device, dtype=profile.dtype)
    model, opt, data, step = T.setup_provider(provider, cfg)
    params = sum(p.numel() for p in model.parameters())
    _, tokens = step(model, opt, data[0], cfg)  # compile / warm-up outside the measurement
    info = run_bench(
        lambda: step(model, opt, data[0], cfg),
        group=f"train step {params / 1e6:.3g}M params {cfg.samples} samples {profile.dtype}",
        flops=T.model_flops(params, tokens),
        provider=provider,
        baseline=provider == "reference",
        model_tokens=tokens,
        params=params,
        warm=True,
    )
    seconds = info["wall_ms" if device == "cuda" else "cpu_ms"] * 1e-3
    info["model_tokens_per_s"] = round(tokens / seconds)
