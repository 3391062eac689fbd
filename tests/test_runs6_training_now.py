"""A run folder a launch is training in now: a fresh launch into it said "already holds a run;
pass --resume to continue it or --overwrite to start over", and each of those was then refused
(``pid N is training in this folder``); it now says who trains there in its one line.
``reflectioncoder runs`` says so too (``training now: pid N on HOST``). Who holds the lock is
read from the kernel's table (/proc/locks), never by taking the lock."""

from __future__ import annotations

import fcntl
import json
from pathlib import Path

import pytest

from reflectioncoder.cli import main
from reflectioncoder.train.run_folder import LOCK_FILE, RunFolderError, check_run_folder, held_by

pytestmark = pytest.mark.skipif(not Path("/proc/locks").is_file(), reason="Linux's lock table")


@pytest.fixture
def training(tmp_path):
    """A run folder with a logged step whose lock a launch (this test) holds."""
    run = tmp_path / "run"
    run.mkdir()
    sections = "model: {}\ndata: {}\ntrain: {}\ncheckpoint: {save_every: 50}\n"
    (run / "config.yaml").write_text(sections)  # a run's (run_folder.RUN_SECTIONS)
    (run / "metrics.jsonl").write_text(json.dumps({"step": 1, "loss": 5.0}) + "\n")
    with (run / LOCK_FILE).open("a+") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        lock.write("pid 4242 on node7\n")
        lock.flush()
        yield run


def test_a_fresh_launch_names_who_trains_there(training):
    assert held_by(training) == "pid 4242 on node7"
    with pytest.raises(RunFolderError) as refused:
        check_run_folder(training, resume=False, overwrite=False)
    assert str(refused.value) == (
        f"{training}: checkpoint.out_dir: pid 4242 on node7 is training in this folder now; "
        "wait for it to end or choose another folder"
    )


def test_a_lock_file_no_one_holds_is_no_training(tmp_path):
    (tmp_path / LOCK_FILE).write_text("pid 1 on the machine that made the run\n")
    assert held_by(tmp_path) is None
    assert held_by(tmp_path / "none") is None


def test_runs_says_a_run_is_training_now(training, capsys):
    assert main(["runs", str(training)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert "training now: pid 4242 on node7 (--resume once it has ended)" in out
