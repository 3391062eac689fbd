"""A JSON array or an indented JSON document given as training data (datasets' to_json with
lines=False, json.dump(rows, f, indent=2)): one line saying what the file is and the command
that converts it, not line 1's parse error ('Expecting value (col 1)')."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from reflectioncoder.cli import main

DATA = Path(__file__).resolve().parent / "data" / "reflection_small.jsonl"


@pytest.mark.parametrize(
    ("indent", "bom", "kind"),
    [(None, "", "a JSON array"), (2, "", "a JSON array"), (2, "\ufeff", "a JSON array")],
)
def test_a_json_array_is_named_with_the_command_that_converts_it(
    tmp_path, capsys, indent, bom, kind
):
    rows = [json.loads(line) for line in DATA.read_text().splitlines() if line.strip()]
    path = tmp_path / "rows.json"
    path.write_text(bom + json.dumps(rows, indent=indent), encoding="utf-8")
    args = ["train", "--preset", "tiny", "--set", f"data.files=[{path}]",
            "--set", f"checkpoint.out_dir={tmp_path / 'run'}"]  # fmt: skip
    assert main(args) == 1
    assert capsys.readouterr().err == (
        f"reflectioncoder train: {path}:1:<file>: {kind}, not JSON lines (one sample per line): "
        f"convert it with `reflectioncoder prepare-data --in {path} --out FILE.jsonl`\n"
    )
    assert not (tmp_path / "run").exists()


def test_an_indented_object_is_named(tmp_path, capsys):
    path = tmp_path / "sample.json"
    path.write_text(json.dumps(json.loads(DATA.read_text().splitlines()[0]), indent=2))
    args = ["train", "--preset", "tiny", "--set", f"data.files=[{path}]",
            "--set", "data.skip_bad=true",  # a file-level problem: never skipped line by line
            "--set", f"checkpoint.out_dir={tmp_path / 'run'}"]  # fmt: skip
    assert main(args) == 1
    err = capsys.readouterr().err
    assert f"{path}:1:<file>: a JSON object over several lines, not JSON lines" in err
