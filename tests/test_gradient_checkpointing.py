"""Gradient checkpointing really takes effect for a model loaded from disk, through the same path
as ``reflectioncoder train`` (``Trainer(cfg)`` with ``model.name_or_path``): every decoder layer
runs its forward a second time in backward (counted), and not without it."""

from __future__ import annotations

import pytest

from reflectioncoder import packed_attention as attention_room
from reflectioncoder.config_loader import load_config
from reflectioncoder.model import build_tiny_llama
from reflectioncoder.testing.toy_jsonl import write_toy_jsonl
from reflectioncoder.tokenizer import train_tokenizer
from reflectioncoder.train.trainer import Trainer


def save_tiny_model(folder, data_texts: list[str], seed: int, num_layers: int = 3) -> None:
    """A small Llama and its tokenizer saved as a Hugging Face folder (what users point at)."""
    tok = train_tokenizer(data_texts, vocab_size=400)
    model = build_tiny_llama(
        len(tok), hidden_size=32, intermediate_size=48, num_layers=num_layers, seed=seed
    )
    model.config._attn_implementation = "sdpa"
    model.save_pretrained(str(folder))
    tok.save_pretrained(str(folder))


@pytest.mark.parametrize("checkpointing", [False, True])
def test_loaded_model_recomputes_every_layer_in_backward(
    tmp_path, seed, monkeypatch, checkpointing
):
    data = write_toy_jsonl(tmp_path / "toy.jsonl", 8, seed=seed)
    texts = [line for line in data.read_text().splitlines()]
    save_tiny_model(tmp_path / "model", texts, seed)
    cfg = load_config(
        base="tiny",
        overrides=[
            f"model.name_or_path={tmp_path / 'model'}",
            "model.arch={}",
            f"model.gradient_checkpointing={str(checkpointing).lower()}",
            f"data.files=[{data}]",
            f"checkpoint.out_dir={tmp_path / 'run'}",
            "checkpoint.save_every=0",
            "checkpoint.save_final=false",
            "train.samples_per_step=4",
            "train.epochs=1",
            "packing.max_tokens=600",
            "logging.progress=false",
            "logging.tensorboard=false",
            "logging.plot=false",
        ],
    )
    trainer = Trainer(cfg)
    try:
        assert trainer.model.training
        layers = trainer.model.config.num_hidden_layers
        calls = {"forward": 0, "in_backward": 0}
        phase = {"backward": False}
        attention = attention_room.varlen_attention

        def counted_attention(*args, **kwargs):  # runs inside each decoder layer's forward
            calls["forward"] += 1
            calls["in_backward"] += phase["backward"]
            return attention(*args, **kwargs)

        real_backward = trainer.engine.backward

        def backward(loss):  # every layer forward seen in here is a recomputation
            phase["backward"] = True
            real_backward(loss)
            phase["backward"] = False

        trainer.engine.backward = backward
        monkeypatch.setattr(attention_room, "varlen_attention", counted_attention)
        batches = trainer.step_batches(trainer.step)
        row = trainer.train_step()
    finally:
        trainer.close()
    assert not row["skipped"]
    runs = layers * len(batches)
    assert calls["in_backward"] == (runs if checkpointing else 0)
    assert calls["forward"] == (2 * runs if checkpointing else runs)
