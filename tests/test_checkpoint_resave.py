"""A step saved again (a run resumed from an earlier checkpoint redoes it) that the disk refuses
at the last rename keeps the complete copy saved before, where --resume finds it."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest
from test_trainer import tiny_config

from reflectioncoder.errors import UserError
from reflectioncoder.train.checkpoint import TMP_PREFIX, list_checkpoints, read_trainer_state
from reflectioncoder.train.trainer import Trainer

SAVES = ("checkpoint.save_every=1", "checkpoint.save_final=false", "train.max_steps=2")


def test_a_refused_rename_of_a_step_saved_again_keeps_the_earlier_copy(tmp_path, seed):
    cfg = tiny_config(tmp_path, seed, extra=SAVES)
    first = Trainer(cfg)
    try:
        first.train()
    finally:
        first.close()
    step1, step2 = list_checkpoints(tmp_path / "run")
    real = Path.rename

    def refused(self, target):  # the new copy's rename into place: the disk says no
        if self.name == TMP_PREFIX + step2.name:
            raise OSError(errno.ENOSPC, "No space left on device", str(target))
        return real(self, target)

    again = Trainer(cfg, resume=str(step1))
    try:
        with pytest.MonkeyPatch.context() as mp, pytest.raises(UserError, match="not saved"):
            mp.setattr(Path, "rename", refused)
            again.train()
    finally:
        again.close()
    assert list_checkpoints(tmp_path / "run") == [step1, step2]
    assert read_trainer_state(step2)["step"] == 2
    assert not list((tmp_path / "run" / "checkpoints").glob(TMP_PREFIX + "*"))
