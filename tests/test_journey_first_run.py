"""A new user's first command, ``reflectioncoder train --preset tiny`` with no data: one line
saying what to add (exit 2), nothing written (it said "no text to train a tokenizer on")."""

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
