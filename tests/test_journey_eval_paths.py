"""``reflectioncoder evaluate`` given a folder for --json (it failed after scoring, or after
hours of generation, naming a temporary file) or a checkpoint or run folder for --model (it
said "no config.json here"): one line at once, naming the flag and what to give."""

from __future__ import annotations

import json

import pytest

from reflectioncoder.cli import main

SAMPLE = {"task_id": "HumanEval/0", "completion": "    return True\n"}


@pytest.mark.parametrize("flag", ["--json", "--save-samples"])
def test_an_output_that_is_a_folder_is_refused_first(tmp_path, capsys, flag):
    samples = tmp_path / "s.jsonl"
    samples.write_text(json.dumps(SAMPLE) + "\n")
    results = tmp_path / "results"
    results.mkdir()
    argv = ["evaluate", "--task", "humaneval", "--samples", str(samples), "--limit", "1"]
    assert main([*argv, flag, str(results)]) == 2
    assert capsys.readouterr().err == (
        f"reflectioncoder evaluate: {results}: {flag}: is a folder; give a file name\n"
    )
    assert list(results.iterdir()) == []


@pytest.mark.parametrize(
    ("given", "model"),
    [
        ("run/checkpoints/step-000004", "run/checkpoints/step-000004/model"),
        ("run", "run/checkpoints/step-000004/model"),  # killed before its final model
    ],
)
def test_a_checkpoint_given_as_the_model_names_its_model(tmp_path, capsys, given, model):
    for step in ("step-000002", "step-000004"):
        (tmp_path / "run/checkpoints" / step / "model").mkdir(parents=True)
        (tmp_path / "run/checkpoints" / step / "model/config.json").write_text("{}")
    argv = ["evaluate", "--task", "humaneval", "--model", str(tmp_path / given)]
    assert main(argv) == 1
    assert capsys.readouterr().err == (
        f"reflectioncoder evaluate: {tmp_path / given}: --model: not a model folder; the model "
        f"in it: {tmp_path / model}\n"
    )
