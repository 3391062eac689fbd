"""A save the disk refuses says what to run once it takes writes, and where ``--resume`` goes
on: it said "what was saved before is untouched" also when nothing had been saved, and never
what to do next (tests/test_journey_disk_full.py: a refusal after an earlier checkpoint)."""

from __future__ import annotations

import errno

import pytest
import torch

from reflectioncoder.cli import main
from reflectioncoder.testing.cli import train_argv
from reflectioncoder.testing.toy_jsonl import write_toy_jsonl

REFUSED = {
    "full": (OSError(errno.ENOSPC, "No space left on device"), "make room, then"),
    "read-only": (OSError(errno.EROFS, "Read-only file system"), "once the disk takes writes,"),
}


@pytest.mark.parametrize("disk", sorted(REFUSED))
def test_the_first_save_refused_says_resume_starts_over(tmp_path, capsys, monkeypatch, disk):
    data = write_toy_jsonl(tmp_path / "data.jsonl", 8, seed=0)
    out = tmp_path / "run"
    sets = {"data.files": f"[{data}]", "model.tokenizer_vocab_size": 300}
    sets |= {"checkpoint.out_dir": out, "checkpoint.save_every": 2, "logging.report_to": "[none]"}
    sets |= {"train.samples_per_step": 2, "train.max_steps": 4}
    error, then = REFUSED[disk]
    real_save = torch.save

    def refused_at_step_2(obj, f, *args, **kwargs):
        if ".tmp-step-000002" in str(f):
            raise error
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", refused_at_step_2)
    assert main(train_argv(sets, "--no-progress")) == 1
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"reflectioncoder train: {out / 'checkpoints' / 'step-000002'}: checkpoint.out_dir: not "
        f"saved: {error.strerror}; no checkpoint was saved before it: {then} the same command "
        "with --resume starts the run again from step 0"
    )
    assert not (out / "checkpoints" / ".tmp-step-000002").exists()
