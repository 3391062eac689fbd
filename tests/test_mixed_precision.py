"""bf16 weights with fp32 master weights, fp32 gradient sums and AdamW states in the
one-process engine (``model.mixed_precision=masters``), against fp32 and autocast runs."""

from __future__ import annotations

import pytest
import torch
from test_trainer import tiny_config

from reflectioncoder.train.trainer import Trainer

BF16 = ("model.dtype=bf16", "packing.max_tokens=200", "optim.lr=1e-3")


def _losses(tmp_path, seed, name: str, *extra: str, steps: int = 6) -> tuple[list, Trainer]:
    trainer = Trainer(tiny_config(tmp_path / name, seed, n=16, extra=("train.epochs=2", *extra)))
    try:
        return [trainer.train_step()["loss"] for _ in range(steps)], trainer
    finally:
        trainer.close()


def test_masters_hold_the_fp32_state_and_the_weights_follow(tmp_path, seed):
    _, trainer = _losses(tmp_path, seed, "masters", *BF16, steps=2)
    engine = trainer.engine
    assert all(w.dtype == torch.bfloat16 for w in engine.weights)
    assert all(m.dtype == torch.float32 for m in engine.params)
    pairs = list(zip(engine.weights, engine.params, strict=True))
    assert all(w.grad is None and m.grad is None for w, m in pairs)
    for w, m in pairs:
        assert torch.equal(w, m.to(torch.bfloat16))
    moments = [s["exp_avg"] for s in engine.optimizer.state.values()]
    assert moments and all(x.dtype == torch.float32 for x in moments)
    # The masters hold what bf16 rounds off (small updates add up there instead of vanishing).
    assert max((m - w.float()).abs().max() for w, m in pairs) > 0


def test_bf16_rule_against_fp32(tmp_path, seed, monkeypatch):
    """The masters' losses stay as close to fp32's as twice plain PyTorch bf16's (bf16 weights
    and AdamW states, no masters), summed over the steps."""
    from reflectioncoder.train import local_engine

    fp32, _ = _losses(tmp_path, seed, "fp32", "packing.max_tokens=200", "optim.lr=1e-3")
    masters, _ = _losses(tmp_path, seed, "masters", *BF16)
    monkeypatch.setattr(local_engine, "_fp32_master", lambda weight: weight)
    plain, trainer = _losses(tmp_path, seed, "plain", *BF16)
    assert trainer.engine.params[0].dtype == torch.bfloat16  # no masters in that run
    ours = sum(abs(m - f) for m, f in zip(masters, fp32, strict=True))
    torchs = sum(abs(p - f) for p, f in zip(plain, fp32, strict=True))
    assert ours <= 2 * torchs, (fp32, masters, plain)


def test_resume_restores_the_masters(tmp_path, seed):
    extra = (*BF16, "checkpoint.save_every=2")
    cfg = tiny_config(tmp_path, seed, n=16, extra=extra)
    trainer = Trainer(cfg)
    try:
        trainer.train_step()
        trainer.train_step()
        trainer.save()
        masters = [m.detach().clone() for m in trainer.engine.params]
    finally:
        trainer.close()
    again = Trainer(cfg, resume=True)
    try:
        for saved, loaded in zip(masters, again.engine.params, strict=True):
            assert torch.equal(saved, loaded)
        assert again.step == 2
    finally:
        again.close()


def test_unknown_mixed_precision_is_refused(tmp_path, seed):
    with pytest.raises(ValueError, match="model.mixed_precision"):
        tiny_config(tmp_path, seed, extra=("model.mixed_precision=fp8",))


def test_rope_frequencies_stay_fp32(tmp_path, seed):
    """bf16 weights, fp32 RoPE frequencies, as from_pretrained and DeepSpeed keep them: cast to
    bf16 (8 bits of mantissa) the angle at position 16K would be off by up to 20 rad, and the
    trained model would not see the positions inference gives it."""
    trainer = Trainer(tiny_config(tmp_path / "rope", seed, n=16, extra=BF16))
    try:
        model = trainer.model
        assert next(model.parameters()).dtype == torch.bfloat16
        rotary = model.model.rotary_emb
        assert rotary.inv_freq.dtype == torch.float32
        dim = model.config.hidden_size // model.config.num_attention_heads
        theta = model.config.rope_parameters["rope_theta"]
        expected = 1.0 / theta ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim)
        torch.testing.assert_close(rotary.inv_freq, expected, rtol=1e-6, atol=0)
        position = torch.tensor([[16383]])
        cos, _ = rotary(torch.zeros(1, 1, dim, dtype=torch.float32), position)
        torch.testing.assert_close(cos[0, 0, : dim // 2], torch.cos(16383 * expected))
    finally:
        trainer.close()
