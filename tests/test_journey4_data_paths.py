"""A folder (or a typo) given as a training or held-out data file: one line naming the path
and the field, before a tokenizer is trained or any data is read, and the run folder kept."""

from __future__ import annotations

from pathlib import Path

import pytest

from reflectioncoder.cli import main

DATA = Path(__file__).resolve().parent / "data" / "reflection_small.jsonl"


@pytest.mark.parametrize(
    ("field", "what", "state"),
    [
        ("data.files", "folder", "is a folder, not a file"),
        ("data.validation_files", "folder", "is a folder, not a file"),
        ("data.validation_files", "missing", "not found"),
    ],
)
def test_a_data_path_that_is_not_a_file_is_named(tmp_path, capsys, field, what, state):
    bad = tmp_path / "data" if what == "folder" else tmp_path / "held_out.jsonl"
    bad.mkdir() if what == "folder" else None
    out = tmp_path / "run"
    files = bad if field == "data.files" else DATA
    args = ["train", "--preset", "tiny", "--set", f"data.files=[{files}]",
            "--set", f"checkpoint.out_dir={out}"]  # fmt: skip
    if field != "data.files":
        args += ["--set", f"{field}=[{bad}]"]
    assert main(args) == 1
    err = capsys.readouterr().err
    # was "data file not found: DIR" (it exists) with no field, or "not found" only once the
    # training data had been tokenised
    assert err == f"reflectioncoder train: {bad}: {field}: data file {state}\n"
    assert not out.exists()
