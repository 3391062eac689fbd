"""An output path under a file (``--out notes.txt/run.jsonl``, a typo for a folder) is named in
one line before any work, by every command that writes: evaluate said
``OUT.samples.jsonl.partial: File exists`` (a temporary name, and the wrong reason) after the
model had loaded and generated its first batch; train said the file was "read-only to this
user"; build-data and prepare-data said "Not a directory" only once they wrote."""

from __future__ import annotations

import pytest

from reflectioncoder.cli import main
from reflectioncoder.testing.cli import train_argv

SMALL = "tests/data/reflection_small.jsonl"

# (command, its argv with {out} for the output and {file} for an existing file, the flag)
WRITERS = [
    ("evaluate", "--task humaneval --model {file}.model --save-samples {out}", "--save-samples"),
    ("evaluate", "--task humaneval --model {file}.model --json {out}", "--json"),
    ("build-data", "--n 2 --out {out}", "--out"),
    ("prepare-data", "--in tests/data/prepare --out {out} --no-decontaminate", "--out"),
    ("inspect", f"--data {SMALL} --tokenizer {{file}}.tok --json {{out}}", "--json"),
    ("convert-gguf", "{file} {out}", "OUT"),
    ("install-model", "smollm2-135m-instruct --out {out}", "--out"),
]


@pytest.mark.parametrize(
    ("command", "argv", "flag"), WRITERS, ids=[w[2] + "-" + w[0] for w in WRITERS]
)
def test_an_output_under_a_file_is_named_before_any_work(tmp_path, capsys, command, argv, flag):
    blocker = tmp_path / "notes.txt"
    blocker.write_text("mine\n")
    out = blocker / "run" / "out.jsonl"
    words = argv.format(out=out, file=blocker).split()
    assert (
        main([command, *words, "--no-progress"] if command != "convert-gguf" else [command, *words])
        == 1
    )
    assert capsys.readouterr().err == (
        f"reflectioncoder {command}: {out}: {flag}: cannot be created: {blocker} is a file, "
        "not a folder\n"
    )
    assert blocker.read_text() == "mine\n"


def test_a_run_folder_under_a_file_is_not_called_read_only(tmp_path, capsys):
    blocker = tmp_path / "notes.txt"
    blocker.write_text("mine\n")
    out = blocker / "tiny"
    argv = train_argv(
        {"data.files": f"[{tmp_path / 'never-read.jsonl'}]", "checkpoint.out_dir": out}
    )
    assert main(argv) == 1
    assert capsys.readouterr().err == (
        f"reflectioncoder train: {out}: checkpoint.out_dir: cannot be created: {blocker} is a "
        "file, not a folder\n"
    )
