"""A checkpoint's files reach the disk (fsync) before the rename that makes it complete, and the
rename before pruning deletes the checkpoints before it. Nothing was synced: a node lost after a
save (a power cut, a preempted VM) could leave the newest checkpoint's files empty or cut short
in the page cache's place, with keep_last: 1 the only one: the run lost."""

from __future__ import annotations

import os
from pathlib import Path

from reflectioncoder.config_loader import load_config
from reflectioncoder.testing.toy_jsonl import write_toy_jsonl
from reflectioncoder.train import checkpoint
from reflectioncoder.train.trainer import Trainer

ARCH = "model.arch={hidden_size: 32, intermediate_size: 48, num_layers: 2, num_heads: 4, " \
    "num_kv_heads: 2, max_position_embeddings: 512}"  # fmt: skip


def test_a_checkpoint_is_on_disk_before_it_is_complete_and_before_pruning(tmp_path, monkeypatch):
    data = write_toy_jsonl(tmp_path / "toy.jsonl", 10, seed=0)
    out = tmp_path / "run"
    sets = [ARCH, "model.tokenizer_vocab_size=400", f"data.files=[{data}]",
            f"checkpoint.out_dir={out}", "checkpoint.keep_last=1", "train.epochs=1",
            "logging.report_to=[none]", "logging.progress=false"]  # fmt: skip
    trainer = Trainer(load_config(base="tiny", overrides=sets))
    synced: list[Path] = []
    real_fsync, real_replace, real_prune = os.fsync, checkpoint._replace_dir, None

    def fsync(fd: int) -> None:
        synced.append(Path(os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace_dir(src: Path, dst: Path) -> None:
        files = list(src.rglob("*"))
        assert files and not [p for p in [src, *files] if p not in synced], "renamed unsynced"
        real_replace(src, dst)

    def prune(out_dir, keep_last, keep):
        assert synced[-1] == keep.parent, "pruned before the rename was on disk"
        real_prune(out_dir, keep_last, keep)

    real_prune = checkpoint.prune_checkpoints
    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(checkpoint, "_replace_dir", replace_dir)
    monkeypatch.setattr(checkpoint, "prune_checkpoints", prune)
    try:
        trainer.train_step()
        saved = trainer.save()
        trainer.train_step()
        trainer.save()  # prunes the first
    finally:
        trainer.close()
    assert not saved.exists() and checkpoint.list_checkpoints(out)[-1].name == "step-000002"
