"""Bad input that used to escape as an internal error: a lone UTF-16 surrogate spelt with JSON's
escapes in training data (the tokenizer's TypeError, with no file or line), and a samples row
whose task_id is a list or an object (``unhashable type``). Each is now one line naming the file,
the line and the field."""

from __future__ import annotations

import json

import pytest
from test_cli_errors import SAMPLE, _one_line_error

from reflectioncoder.data.schema import DataError, LoadReport, load_jsonl
from reflectioncoder.eval.samples import number_samples
from reflectioncoder.testing.toy_jsonl import write_toy_jsonl


def _with_surrogate(tmp_path):
    data = write_toy_jsonl(tmp_path / "data.jsonl", 3, seed=0)
    lines = data.read_text().splitlines()
    row = json.loads(lines[1])
    row["messages"][-1]["content"][0]["content"] += "\ud83d"  # half of an emoji's pair
    lines[1] = json.dumps(row)  # ensure_ascii: written as the escape \\ud83d
    data.write_text("\n".join(lines) + "\n")
    field = f"messages[{len(row['messages']) - 1}].content[0].content"
    return data, field


def test_a_lone_surrogate_in_data_is_a_bad_field(tmp_path):
    data, field = _with_surrogate(tmp_path)
    with pytest.raises(DataError) as err:
        load_jsonl(data)
    assert str(err.value).startswith(f"{data}:2:{field}: a lone surrogate \\ud83d")
    report = LoadReport()
    assert len(load_jsonl(data, skip_bad=True, report=report)) == 2
    assert report.skipped == [str(err.value)]


def test_train_names_the_line_of_a_lone_surrogate(tmp_path, capfd):
    data, field = _with_surrogate(tmp_path)
    out = tmp_path / "out"
    argv = ["train", "--preset", "tiny", "--set", f"checkpoint.out_dir={out}"]
    argv += ["--set", f"data.files=[{data}]"]
    line = _one_line_error(capfd, argv, 1, out, f"{data}:2:{field}", "surrogate")
    assert "TypeError" not in line


@pytest.mark.parametrize("task_id", [["HumanEval/0"], {"id": "HumanEval/0"}, 0, None])
def test_a_task_id_that_is_not_a_string_is_a_bad_field(tmp_path, capfd, task_id):
    samples = tmp_path / "samples.jsonl"
    rows = [SAMPLE, {"task_id": task_id, "completion": "    return 1\n"}]
    samples.write_text("".join(json.dumps(r) + "\n" for r in rows))
    argv = ["evaluate", "--task", "humaneval", "--samples", str(samples)]
    words = (f"{samples}:2", "task_id", "expected a string")
    line = _one_line_error(capfd, argv, 1, tmp_path / "none", *words)
    assert "unhashable" not in line


def test_number_samples_names_a_task_id_of_another_type():
    with pytest.raises(ValueError, match=r"samples:1:task_id: \['HumanEval/0'\]"):
        number_samples({"HumanEval/0": None}, [{"task_id": ["HumanEval/0"], "completion": ""}])
