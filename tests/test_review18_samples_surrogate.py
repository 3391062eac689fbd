"""A samples row whose completion holds a lone UTF-16 surrogate (JSON's ``\\ud83d``: half of an
emoji's pair, as a harness that cuts strings by UTF-16 units leaves) stopped a MultiPL-E
evaluation after loading everything, with no file, line or field: "reflectioncoder evaluate:
'utf-8' codec can't encode character '\\ud83d' in position 218" (the program's source file
could not be written). It is now a bad row naming its file, line and field, as the same
character in training data is (test_audit3_bad_text_types)."""

from __future__ import annotations

import json

import pytest

from reflectioncoder.cli import main
from reflectioncoder.errors import UserError
from reflectioncoder.eval.samples import number_samples, read_samples

ROW = {"task_id": "HumanEval_23_strlen", "completion": "    return string.size(); // \ud83d\n"}


def _samples(tmp_path):
    path = tmp_path / "samples.jsonl"
    good = {"task_id": "HumanEval_23_strlen", "completion": "    return string.size();\n"}
    path.write_text(json.dumps(good) + "\n" + json.dumps(ROW) + "\n")  # ensure_ascii: \\ud83d
    return path


def test_read_samples_names_the_row(tmp_path):
    path = _samples(tmp_path)
    with pytest.raises(UserError, match=r"samples\.jsonl:2: completion: a lone surrogate \\ud83d"):
        read_samples(path)


def test_number_samples_names_the_row():
    with pytest.raises(ValueError, match=r"^samples:1:completion: a lone surrogate \\ud83d at"):
        number_samples({ROW["task_id"]}, [ROW])


def test_evaluate_stops_in_one_line_before_scoring(tmp_path, capsys):
    path = _samples(tmp_path)
    code = main(["evaluate", "--task", "multiple-cpp", "--samples", str(path), "--limit", "1",
                 "--k", "1", "--no-progress"])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1, err
    assert f"{path}:2: completion: a lone surrogate \\ud83d" in err[0], err
