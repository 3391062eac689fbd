"""A bug that stops a run in its steps (an internal error) is one line, and its traceback is
kept in the run folder, OUT/logs/traceback-rank-N.txt (each rank its own), the line naming it.
The line said "rerun with --debug" only: a run stopped at step 40000 of a multi-day launch had
nothing else to go on, and under a launcher the traceback was nowhere."""

from __future__ import annotations

import pytest

from reflectioncoder.cli import guarded, main
from reflectioncoder.errors import raised_in_run
from reflectioncoder.testing.cli import train_argv
from reflectioncoder.testing.toy_jsonl import write_toy_jsonl
from reflectioncoder.train.trainer import Trainer


def _bug_in(folder):
    def body() -> int:
        try:
            raise RuntimeError("boom")
        except RuntimeError as err:
            if folder is not None:
                raised_in_run(err, folder)
            raise

    return body


@pytest.mark.parametrize("rank", ["0", "3"])
def test_the_line_names_the_kept_traceback(tmp_path, capsys, monkeypatch, rank):
    monkeypatch.setenv("RANK", rank)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert guarded("prog", _bug_in(tmp_path)) == 1
    kept = tmp_path / "logs" / f"traceback-rank-{rank}.txt"
    assert capsys.readouterr().err.splitlines() == [
        f"prog: RuntimeError: boom (an internal error; its traceback: {kept})"
    ]
    text = kept.read_text()
    assert "Traceback (most recent call last)" in text and "RuntimeError: boom" in text
    assert "in body" in text  # where it was raised


def test_an_error_outside_a_run_says_rerun_with_debug(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert guarded("prog", _bug_in(None)) == 1
    said = capsys.readouterr().err.strip()
    assert said.endswith("(an internal error: rerun with --debug or REFLECTIONCODER_DEBUG=1 "
                         "for details)"), said  # fmt: skip
    assert not (tmp_path / "logs").exists()


def test_a_bug_in_the_steps_of_train_leaves_its_traceback_in_the_run(tmp_path, capsys,
                                                                    monkeypatch):  # fmt: skip
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    monkeypatch.delenv("RANK", raising=False)
    data = write_toy_jsonl(tmp_path / "toy.jsonl", 10, seed=0)
    out = tmp_path / "run"
    step = Trainer.train_step

    def breaks_at_step_2(self, *args):
        if self.step == 1:
            raise IndexError("a bug at step 2")
        return step(self, *args)

    monkeypatch.setattr(Trainer, "train_step", breaks_at_step_2)
    sets = {"data.files": f"[{data}]", "checkpoint.out_dir": out, "model.tokenizer_vocab_size":
            400, "logging.report_to": "[none]", "train.epochs": 1}  # fmt: skip
    assert main([*train_argv(sets, "--no-progress")]) == 1
    kept = out / "logs" / "traceback-rank-0.txt"
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"reflectioncoder train: a bug at step 2 (an internal error; its traceback: {kept})"
    )
    assert "in breaks_at_step_2" in kept.read_text()
