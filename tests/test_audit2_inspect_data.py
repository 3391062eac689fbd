"""`inspect --data` that is missing or a folder is one line naming the path and the flag (as
`train` names data.files), exit 1, found before the tokenizer loads (issue 11: one line naming
file and field)."""

from __future__ import annotations

import pytest

from reflectioncoder.cli import main


@pytest.mark.parametrize("kind, reason", [("missing", "not found"), ("folder", "is a folder")])
def test_inspect_names_a_bad_data_path_with_its_flag(tmp_path, capsys, kind, reason):
    data = tmp_path / "data.jsonl"
    if kind == "folder":
        data.mkdir()
    argv = ["inspect", "--data", str(data), "--tokenizer", str(tmp_path / "no-tokenizer")]
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert err.splitlines() == [err] and err.startswith(
        f"reflectioncoder inspect: {data}: --data: "
    )
    assert reason in err
