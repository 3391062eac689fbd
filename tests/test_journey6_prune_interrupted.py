"""A Ctrl-C while old checkpoints are pruned never leaves one listed as complete without its model.

Seen with SmolLM2-135M (keep_last 1, save_every 1): interrupted just after step 2's save,
checkpoints/step-000001 kept COMPLETE, rng/ and trainer_state.json but had lost model/ and
optimizer.pt, and was still a complete checkpoint to `list_checkpoints` (`reflectioncoder runs`)."""

from __future__ import annotations

import shutil
from types import SimpleNamespace

import pytest

from reflectioncoder.train import checkpoint
from reflectioncoder.train.checkpoint import COMPLETE, list_checkpoints, prune_checkpoints


def _fake_checkpoint(out, step: int):
    path = out / "checkpoints" / f"step-{step:06d}"
    (path / "model").mkdir(parents=True)
    (path / "model" / "model.safetensors").write_bytes(b"weights")
    (path / COMPLETE).write_text("ok\n")
    return path


def test_interrupted_prune_leaves_no_complete_checkpoint_without_model(tmp_path, monkeypatch):
    older, newer = _fake_checkpoint(tmp_path, 1), _fake_checkpoint(tmp_path, 2)
    real_rmtree = shutil.rmtree

    def interrupted_rmtree(path, ignore_errors=False):
        real_rmtree(path / "model")  # the model goes first, then Ctrl-C
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint, "shutil", SimpleNamespace(rmtree=interrupted_rmtree))
    with pytest.raises(KeyboardInterrupt):
        prune_checkpoints(tmp_path, keep_last=1, keep=newer)
    monkeypatch.undo()
    assert list_checkpoints(tmp_path) == [newer]
    assert not older.exists()

    checkpoint._clear_torn_saves(newer.parent)  # what the next save does first
    assert sorted(p.name for p in newer.parent.iterdir()) == ["step-000002"]


def test_prune_keeps_the_newest(tmp_path):
    paths = [_fake_checkpoint(tmp_path, s) for s in (1, 2, 3, 4)]
    prune_checkpoints(tmp_path, keep_last=2, keep=paths[-1])
    assert list_checkpoints(tmp_path) == paths[2:]
    assert sorted(p.name for p in paths[0].parent.iterdir()) == ["step-000003", "step-000004"]
