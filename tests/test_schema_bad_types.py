"""A role or block type that is a JSON list or object is a bad line like any other: one
DataError naming the file, line and field (it was Python's TypeError 'unhashable type', an
internal error, and ``data.skip_bad`` could not skip it)."""

from __future__ import annotations

import json

import pytest

from reflectioncoder.data.schema import DataError, LoadReport, load_jsonl

GOOD = {
    "type": "generation",
    "messages": [
        {"role": "user", "content": [{"type": "text", "content": "Add 1."}]},
        {"role": "assistant", "content": [{"type": "code", "content": "x + 1"}]},
    ],
}


@pytest.mark.parametrize("value", [[], {}, ["user"], {"role": "user"}])
@pytest.mark.parametrize("field", ["messages[1].role", "messages[0].content[0].type"])
def test_a_list_or_object_role_or_block_type_is_one_bad_line(tmp_path, field, value):
    bad = json.loads(json.dumps(GOOD))
    if field.endswith("role"):
        bad["messages"][1]["role"] = value
    else:
        bad["messages"][0]["content"][0]["type"] = value
    path = tmp_path / "data.jsonl"
    path.write_text(json.dumps(GOOD) + "\n" + json.dumps(bad) + "\n")
    with pytest.raises(DataError) as err:
        load_jsonl(path)
    assert str(err.value).startswith(f"{path}:2:{field}: unknown ")
    report = LoadReport()
    assert len(load_jsonl(path, skip_bad=True, report=report)) == 1
    assert report.skipped == [str(err.value)]
