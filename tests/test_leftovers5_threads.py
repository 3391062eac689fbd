"""``train.threads: null`` picks the usable cores less those the 1-minute load average says other
programs keep busy: a busy machine (or one a heavy run just left) gives a later launch fewer
threads, and a float sum over another number of threads differs in its last bits. The choice is
said with its reason, each checkpoint records it, and a ``--resume`` keeps the run's number
(it took whatever the load gave then: a resumed run computed its steps with other threads)."""

from __future__ import annotations

import logging
import os
import shutil

import pytest
import torch
from test_relaunch_first_step import _argv

from reflectioncoder.cli import main as cli_main
from reflectioncoder.cpus import thread_choice, usable_cores
from reflectioncoder.train import checkpoint
from reflectioncoder.train.distributed import set_threads


@pytest.fixture
def torch_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def _load(monkeypatch, busy: float) -> None:
    monkeypatch.setattr(os, "getloadavg", lambda: (busy, busy, busy))


def test_the_choice_says_the_load_it_gave_way_to(monkeypatch):
    monkeypatch.setattr("reflectioncoder.cpus.usable_cores", lambda: 8)
    _load(monkeypatch, 0.2)
    assert thread_choice(1) == (8, "8 usable core(s)")
    assert thread_choice(2) == (4, "8 usable core(s) shared by 2 ranks")
    _load(monkeypatch, 6.6)
    threads, why = thread_choice(1)
    assert threads == 1 and why == (
        "8 usable core(s), 7 kept busy by other programs (1-minute load average 6.6)"
    )


def test_a_resume_keeps_the_runs_threads_whatever_the_load(monkeypatch, torch_threads, caplog):
    _load(monkeypatch, 50.0)  # a busy machine would give 1
    with caplog.at_level(logging.INFO, logger="reflectioncoder.train"):
        assert set_threads(None, 1, run_threads=3) == 3 and torch.get_num_threads() == 3
        assert set_threads(2, 1, run_threads=3) == 2  # train.threads given wins
    assert caplog.messages == [
        "train.threads: 3 CPU thread(s) per rank (as the run used before --resume)"
    ]


@pytest.mark.slow  # two real runs of the tiny model: about 40 s on a loaded 2-core machine
def test_a_resumed_run_computes_with_the_threads_its_checkpoint_recorded(
    tmp_path, monkeypatch, torch_threads, caplog
):
    if usable_cores() < 2:
        pytest.skip("one usable core: every choice is 1 thread")
    argv = _argv(tmp_path)
    argv[argv.index("checkpoint.save_every=0")] = "checkpoint.save_every=1"
    argv += ["--set", "train.threads=null"]
    _load(monkeypatch, 0.0)  # a quiet machine: every usable core
    assert cli_main(argv) == 0
    out = tmp_path / "run"
    run = checkpoint.read_trainer_state(out / "checkpoints" / "step-000001")["threads"]
    assert run == usable_cores()
    for later in ("checkpoints/step-000002", "final"):  # killed after its first checkpoint
        shutil.rmtree(out / later)
    _load(monkeypatch, 50.0)  # busy now: a fresh choice would be 1
    with caplog.at_level(logging.INFO, logger="reflectioncoder.train"):
        assert cli_main([*argv, "--resume"]) == 0
    said = f"train.threads: {run} CPU thread(s) per rank (as the run used before --resume)"
    assert said in caplog.messages
    assert checkpoint.read_trainer_state(out / "checkpoints" / "step-000002")["threads"] == run
