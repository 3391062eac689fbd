"""A run folder on a filesystem that refuses ``flock`` (Lustre mounted without ``-o flock``
answers ENOSYS; some NFS setups ENOLCK): the run trains, unlocked, and says so in one log line
(it stopped at start-up with the OSError as 'an internal error')."""

from __future__ import annotations

import errno
import fcntl
import logging

import pytest

from reflectioncoder.cli import main
from reflectioncoder.testing.cli import ONE_STEP, train_argv
from reflectioncoder.testing.toy_jsonl import write_toy_jsonl
from reflectioncoder.tokenizer import train_tokenizer


@pytest.mark.parametrize("code", [errno.ENOSYS, errno.ENOLCK])
def test_a_folder_that_cannot_be_locked_still_trains(tmp_path, monkeypatch, caplog, code):
    data = write_toy_jsonl(tmp_path / "data.jsonl", 2, seed=0)
    train_tokenizer([data.read_text()], 300, tmp_path / "tok")
    out = tmp_path / "run"

    def refused(fd, operation):
        raise OSError(code, "refused by the filesystem")

    monkeypatch.setattr(fcntl, "flock", refused)
    sets = {"data.files": f"[{data}]", "model.tokenizer": tmp_path / "tok"}
    sets.update({"checkpoint.out_dir": out, **ONE_STEP})
    with caplog.at_level(logging.WARNING, logger="reflectioncoder"):
        assert main(train_argv(sets, "--no-progress")) == 0
    assert (out / "final" / "config.json").is_file()
    assert [r.getMessage() for r in caplog.records if "not locked" in r.getMessage()] == [
        f"{out}: not locked (the filesystem refuses flock: refused by the filesystem): a second "
        "launch into this folder will not be stopped"
    ]
