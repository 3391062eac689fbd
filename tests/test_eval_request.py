"""The evaluate pipeline's request, sample checks and summariser: the command line is read once
into a frozen request (the parsed arguments are left as given), samples are numbered within
their task, and the summariser gives each benchmark row its pass@k and the details table."""

from __future__ import annotations

import argparse
import dataclasses
import json

import pytest

from reflectioncoder.errors import UsageError, UserError
from reflectioncoder.eval.cli import add_arguments, main
from reflectioncoder.eval.request import EvalRequest
from reflectioncoder.eval.samples import number_samples, select_samples
from reflectioncoder.eval.summary import summarise


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(list(argv))


def test_evaluate_leaves_its_arguments_as_given(shared_dir, tmp_path):
    """Two tasks, their second sample missing: pass@k is settled from the samples (k=1)
    without writing it into the arguments; the result file has it."""
    samples = tmp_path / "s.jsonl"
    rows = [
        {"task_id": "HumanEval/0", "completion": "    return False\n"},
        {"task_id": "HumanEval/1", "completion": "    return []\n"},
    ]
    samples.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "r.json"
    args = _parse("--task", "humaneval", "--samples", str(samples), "--limit", "2", "--no-progress",
                  "--data-dir", str(shared_dir / "evaldata"), "--json", str(out))  # fmt: skip
    given = dict(vars(args))
    assert main(args) == 0
    assert vars(args) == given
    result = json.loads(out.read_text())
    assert set(result["scores"]["HumanEval"]) == {"pass@1"}
    assert [d["completion_id"] for d in result["details"]["HumanEval/1"]] == [0]


def test_request_is_frozen_and_typed(shared_dir):
    args = _parse("--task", "mbpp", "--samples", __file__, "--k", "1", "10",
                  "--data-dir", str(shared_dir / "evaldata"), "--parallel", "3")  # fmt: skip
    req = EvalRequest.from_args(args)
    assert req.k == (1, 10) and req.parallel == 3 and req.progress
    with pytest.raises(dataclasses.FrozenInstanceError):
        req.k = (1,)  # type: ignore[misc]
    with pytest.raises(UsageError, match="--parallel"):
        EvalRequest.from_args(_parse("--task", "mbpp", "--samples", __file__, "--parallel", "0"))


def test_samples_are_numbered_within_their_task():
    tasks = {"a": None, "b": None}
    got = number_samples(
        tasks,
        [
            {"task_id": "a", "completion": "x"},
            {"task_id": "b", "solution": "whole"},
            {"task_id": "a", "completion": "y"},
        ],
    )
    assert [(s.task_id, s.completion_id, s.text, s.whole) for s in got] == [
        ("a", 0, "x", False),
        ("b", 0, "whole", True),
        ("a", 1, "y", False),
    ]
    with pytest.raises(ValueError, match=r"samples:2:task_id: 'c' is not a task"):
        number_samples(tasks, [{"task_id": "a", "completion": ""}, {"task_id": "c"}])
    with pytest.raises(ValueError, match=r"samples:1:completion: expected a string, got null"):
        number_samples(tasks, [{"task_id": "a", "solution": "s"}], solutions=False)


def test_select_samples_settles_pass_at_k(tmp_path):
    rows = [{"task_id": t} for t in ("a", "a", "b", "b", "c")]
    kept, ks = select_samples(["a", "b"], rows, subset=True, k=None, file=None)
    assert len(kept) == 4 and ks == (1,)
    with pytest.raises(UsageError, match="--k 10: some tasks have only 1"):
        select_samples(["a", "b", "c"], rows, subset=False, k=[1, 10], file=None)
    with pytest.raises(UserError, match=r"no sample for 1 tasks, e.g. \['d'\]"):
        select_samples(["a", "d"], rows, subset=True, k=None, file=tmp_path / "s.jsonl")


@dataclasses.dataclass
class _Verdict:
    task_id: str
    completion_id: int
    status: str
    duration_s: float


def test_summarise_rows_and_details():
    results = [
        _Verdict("t1", 0, "pass", 0.12345),
        _Verdict("t1", 1, "fail", 0.5),
        _Verdict("t2", 0, "fail", 1.0),
        _Verdict("t2", 1, "fail", 1.0),
    ]
    rows = {"all": lambda r: r.status == "pass", "none": lambda r: False}
    scores, details = summarise(results, rows, (1, 2, 10), prefix="x:")
    # t1: 1 of 2 pass -> pass@1 0.5, pass@2 1.0; t2: 0; pass@10 needs 10 samples a task
    assert scores == {
        "all": {"pass@1": 0.25, "pass@2": 0.5},
        "none": {"pass@1": 0.0, "pass@2": 0.0},
    }
    assert details["x:t1"][0] == {"completion_id": 0, "status": "pass", "seconds": 0.123}
    assert list(details) == ["x:t1", "x:t2"]


def test_task_files_name_the_line_of_bad_bytes(tmp_path):
    from reflectioncoder.eval.tasks import load_multiple

    folder = tmp_path / "multipl_e"
    folder.mkdir()
    good = {"name": "HumanEval_0_x", "prompt": "f() {\n", "tests": "", "stop_tokens": []}
    (folder / "humaneval-sh.jsonl").write_bytes(json.dumps(good).encode() + b'\n{"name": "\xff"}\n')
    with pytest.raises(
        ValueError, match=r"humaneval-sh.jsonl:2: not UTF-8 \(byte 11 of the line is 0xff"
    ):
        load_multiple(tmp_path, "sh")
