"""One optimizer step end to end: ours (packed, varlen attention, fused loss) against the
authors' recipe (the baseline, bench/providers/train_step.py), on the same model, samples and
mask. FLOPs: reflectioncoder.train.flops' model count of what each provider runs."""

from __future__ import annotations

import pytest

from bench.providers import train_step as T
from bench.providers.common import versions


@pytest.mark.parametrize("provider", T.PROVIDERS)
def test_train_step(provider, run_bench, device, profile) -> None:
    cfg = T.TrainStepConfig(**profile.train_step, device=device, dtype=profile.dtype)
    model, opt, data, step = T.setup_provider(provider, cfg)
    params = sum(p.numel() for p in model.parameters())
    _, tokens = step(model, opt, data[0], cfg)  # compile / warm-up outside the measurement
    info = run_bench(
        lambda: step(model, opt, data[0], cfg),
        group=f"train step {params / 1e6:.3g}M params {cfg.samples} samples {profile.dtype}",
        flops=T.step_flops(provider, model, data[0], cfg).model,
        provider=provider,
        baseline=provider == "reference",
        model_tokens=tokens,
        params=params,
        versions=versions("torch", "transformers", "liger-kernel", "flash-attn"),
        warm=True,
    )
    seconds = info["wall_ms" if device == "cuda" else "cpu_ms"] * 1e-3
    info["model_tokens_per_s"] = round(tokens / seconds)
    info["samples_per_s"] = round(cfg.samples / seconds, 4)  # the figure to compare
    if provider == "reference":  # which recipe this is: the authors' as faithfully as it runs
        info["recipe"] = {
            "attention": T.reference_attention(cfg),
            "checkpointing": cfg.ref_checkpointing,
            "optimizer": "AdamW on fp32 masters" if cfg.dtype == "bf16" else "AdamW, fp32",
            "logits": "full, every row",
        }
