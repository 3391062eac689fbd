"""A run whose every optimizer step has learning rate 0 says so at its start: the paper's recipe
(512 samples a step, 5% warm-up starting at 0, as the authors' Trainer) on a set smaller than a
step is one step at lr 0, and it trained, saved and reported ``done: 1 of 1 steps`` a model
equal to the one it started from, without a word."""

from __future__ import annotations

import logging

import pytest

from reflectioncoder.cli import main
from reflectioncoder.testing.cli import train_argv
from reflectioncoder.testing.toy_jsonl import write_toy_jsonl


@pytest.mark.parametrize(("samples_per_step", "warned"), [(8, True), (2, False)])
def test_a_run_that_cannot_learn_is_warned(tmp_path, caplog, samples_per_step, warned):
    data = write_toy_jsonl(tmp_path / "d.jsonl", 4, seed=1)
    sets = {"data.files": f"[{data}]", "checkpoint.out_dir": tmp_path / "run"}
    sets |= {"model.tokenizer_vocab_size": 300, "logging.report_to": "[none]"}
    sets |= {"train.epochs": 1, "train.samples_per_step": samples_per_step}
    sets |= {"optim.warmup_ratio": 0.05, "checkpoint.save_final": "false"}
    with caplog.at_level(logging.WARNING, logger="reflectioncoder.train"):
        assert main(train_argv(sets, "--no-progress")) == 0
    said = [r.getMessage() for r in caplog.records if "learning rate 0" in r.getMessage()]
    expected = (
        "every optimizer step of this run has learning rate 0 (1 step(s); the warm-up starts at "
        "0, as the authors' Trainer's): the model will not change; give it more steps (more data "
        "or train.epochs, or fewer than 8 train.samples_per_step) or set optim.warmup_ratio=0"
    )
    assert said == ([expected] if warned else []), said
