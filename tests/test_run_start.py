"""A run folder is written only once data, tokenizer and model have loaded, and --resume reuses
OUT/tokenizer only together with a checkpoint it belongs to."""

from __future__ import annotations

import shutil

import pytest

from reflectioncoder.config_loader import load_config
from reflectioncoder.data.dataset import tokenizer_fingerprint
from reflectioncoder.errors import UserError
from reflectioncoder.testing.toy_jsonl import write_toy_jsonl
from reflectioncoder.tokenizer import train_tokenizer
from reflectioncoder.train.checkpoint import latest_checkpoint, read_trainer_state
from reflectioncoder.train.trainer import Trainer

ARCH = (
    "model.arch={hidden_size: 32, intermediate_size: 48, num_layers: 1, num_heads: 2, "
    "num_kv_heads: 1, max_position_embeddings: 512}"
)


def _cfg(data, out, **extra):
    overrides = [
        ARCH,
        "model.tokenizer_vocab_size=300",
        f"data.files=[{data}]",
        f"checkpoint.out_dir={out}",
        "checkpoint.save_every=1",
        "checkpoint.save_final=false",
        "train.samples_per_step=4",
        "train.max_steps=2",
        "logging.progress=false",
        "logging.tensorboard=false",
        "logging.plot=false",
    ] + [f"{k}={v}" for k, v in extra.items()]
    return load_config(base="tiny", overrides=overrides)


def _run(cfg, resume=False):
    trainer = Trainer(cfg, resume=resume)
    try:
        trainer.train()
    finally:
        trainer.close()
    return trainer


def test_a_failed_start_writes_nothing(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(ValueError, match="empty"):
        Trainer(_cfg(empty, tmp_path / "run"))
    assert not (tmp_path / "run").exists()


def test_resume_uses_the_tokenizer_of_its_checkpoint_only(tmp_path):
    data = write_toy_jsonl(tmp_path / "d.jsonl", 8, seed=3)
    out = tmp_path / "run"
    first = _run(_cfg(data, out, **{"train.max_steps": 1}))
    state = read_trainer_state(latest_checkpoint(out))
    assert state["tokenizer_sha256"] == first.tokenizer_sha256

    # Resuming with the tokenizer that checkpoint trained with: accepted, same ids.
    resumed = Trainer(_cfg(data, out, **{"train.max_steps": 1}), resume=True)
    assert resumed.tokenizer_sha256 == first.tokenizer_sha256 and resumed.step == 1
    resumed.close()

    # Another tokenizer put in OUT/tokenizer: refused, naming it, and nothing written.
    shutil.rmtree(out / "tokenizer")
    train_tokenizer(["something else entirely " * 50], 280, out / "tokenizer")
    before = (out / "config.yaml").read_bytes()
    with pytest.raises(UserError, match="is not the tokenizer"):
        Trainer(_cfg(data, out, **{"train.max_steps": 1}), resume=True)
    assert (out / "config.yaml").read_bytes() == before


def test_resume_without_a_checkpoint_does_not_reuse_a_stale_tokenizer(tmp_path):
    """What a failed start used to leave (a config and a tokenizer trained on other text) is
    not picked up by a later --resume: with no checkpoint, the tokenizer is made afresh."""
    data = write_toy_jsonl(tmp_path / "d.jsonl", 8, seed=4)
    out = tmp_path / "run"
    stale = train_tokenizer(["not the data " * 40], 280, out / "tokenizer")
    trainer = Trainer(_cfg(data, out), resume=True)
    trainer.close()
    fresh = Trainer(_cfg(data, tmp_path / "fresh"))
    fresh.close()
    assert trainer.tokenizer_sha256 == fresh.tokenizer_sha256
    assert trainer.tokenizer_sha256 != tokenizer_fingerprint(stale)
