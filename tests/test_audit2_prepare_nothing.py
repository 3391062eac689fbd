"""prepare-data with no row to convert (every row bad, a file of another kind, empty inputs)
fails with one line naming the first bad row's file:line:field, exit 1, and writes nothing: an
empty output with exit 0 would pass for a result (issue 11: bad input, no file created;
issue 21: a reader names the file and line on bad bytes)."""

from __future__ import annotations

from pathlib import Path

import pytest

from reflectioncoder.cli import main as cli_main

PREPARED = Path(__file__).resolve().parent / "data" / "prepare" / "openai.jsonl"
PREPARE = ["prepare-data", "--no-decontaminate", "--no-progress"]


@pytest.mark.parametrize(
    "content, where",
    [
        (b"\xff\xfe{}\n", "in.jsonl:1:<text>: not UTF-8"),
        (b'{"task_id": "HumanEval/0", "completion": "x"}\n', "in.jsonl:1:<row>: unknown format"),
        (b"", "--in: no rows to convert"),
    ],
    ids=["bad-bytes", "samples-file", "empty"],
)
def test_nothing_converted_is_an_error_and_writes_nothing(tmp_path, capsys, content, where):
    src = tmp_path / "in.jsonl"
    src.write_bytes(content)
    out = tmp_path / "new" / "out.jsonl"
    assert cli_main([*PREPARE, "--in", str(src), "--out", str(out)]) == 1
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith("reflectioncoder prepare-data: ") and where in err
    assert not (tmp_path / "new").exists()  # no output, no manifest, no folder


def test_one_good_input_among_bad_ones_still_writes(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b"\xff\n")
    out = tmp_path / "out.jsonl"
    argv = [*PREPARE, "--in", str(bad), "--in", str(PREPARED), "--out", str(out)]
    assert cli_main(argv) == 0
    assert out.read_text().count("\n") == 2  # openai.jsonl: 2 of its 3 rows convert
