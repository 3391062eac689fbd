"""``build-data --problems`` on a file none of whose rows is a problem (another format, a
wrong file): one line naming the first bad row, exit 1, no output written (it exited 0 with an
empty output, which training then refused as an empty file)."""

from __future__ import annotations

import json

from reflectioncoder.cli import main


def test_a_file_of_no_problems_is_refused_naming_the_first_row(tmp_path, capsys):
    problems = tmp_path / "problems.jsonl"
    rows = [{"query": "Write f.", "answer": "def f(): ..."}, {"query": "Write g."}]
    problems.write_text("".join(json.dumps(r) + "\n" for r in rows))  # CodeFeedback rows
    out = tmp_path / "out" / "refl.jsonl"
    assert main(["build-data", "--problems", str(problems), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(
        f"reflectioncoder build-data: none of its 2 rows is a problem; the first, {problems}:1: "
    )
    assert len(err.splitlines()) == 1
    assert not out.parent.exists()
