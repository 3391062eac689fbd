"""A downloaded file given to `train` as it came (CodeFeedback or OpenAI-messages rows, not
ReflectionSeq) is one line naming file, line and field, and the command that converts it
(issue 11: one line naming the problem; issue 10: prepare-data is how those files come in)."""

from __future__ import annotations

from pathlib import Path

import pytest

from reflectioncoder.cli import main
from reflectioncoder.testing.cli import train_argv

PREPARE = Path(__file__).resolve().parent / "data" / "prepare"


@pytest.mark.parametrize(
    "name, kind", [("codefeedback.jsonl", "codefeedback"), ("openai.jsonl", "openai")]
)
def test_train_on_an_unconverted_file_names_prepare_data(tmp_path, capsys, name, kind):
    data = PREPARE / name
    out = tmp_path / "run"
    assert main(train_argv({"data.files": f"[{data}]", "checkpoint.out_dir": out})) == 1
    err = capsys.readouterr().err.strip()
    assert err.splitlines() == [err] and err.startswith(f"reflectioncoder train: {data}:1:type: ")
    assert f"the {kind} format" in err and f"prepare-data --in {data} --out" in err
    assert not out.exists()
