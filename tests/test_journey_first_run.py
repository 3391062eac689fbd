"""A new user's first commands: ``reflectioncoder train --preset tiny`` with no data says what
to add (it said "no text to train a tokenizer on"); --resume with --overwrite is refused (resume
won silently). One line, exit 2, nothing written."""

from __future__ import annotations

from pathlib import Path

import pytest

from reflectioncoder.cli import main

TINY_YAML = Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml"


@pytest.mark.parametrize("start", [["--preset", "tiny"], ["--config", "configs/tiny.yaml"]])
def test_train_without_data_says_what_to_give(tmp_path, monkeypatch, capsys, start):
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "tiny.yaml").write_text(TINY_YAML.read_text())
    monkeypatch.chdir(tmp_path)  # the presets' out_dir, runs/tiny, is relative
    assert main(["train", *start]) == 2
    assert capsys.readouterr().err == (
        "reflectioncoder train: data.files: no training files given, e.g. "
        "--set data.files=[data/reflection.jsonl]\n"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["configs"]


def test_resume_and_overwrite_together_are_refused(tmp_path, capsys):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)  # a run the user may mean to keep
    argv = ["train", "--preset", "tiny", "--resume", "--overwrite"]
    assert main([*argv, "--set", f"checkpoint.out_dir={run}"]) == 2
    assert capsys.readouterr().err == (
        "reflectioncoder train: --resume continues the run, --overwrite deletes it: give one of "
        "them\n"
    )
    assert [p.name for p in run.iterdir()] == ["checkpoints"]
