"""Verdicts as EvalPlus 0.3.1 gives them, on completions that return odd but equal values
(issue 5: the scorer compares decoded plain data outside the box, so a value equal under
EvalPlus's rules must pass, and a value that is not must fail). Each case's expected verdict
is EvalPlus 0.3.1's own, run on the same file (pip install evalplus==0.3.1; bench/bench_eval.py
shows how it runs offline on ../shared/evaldata)."""

from __future__ import annotations

import dataclasses

import pytest

from reflectioncoder.eval.expected import expected_outputs
from reflectioncoder.eval.sandbox import codec, result_decode
from reflectioncoder.eval.score import check_sample
from reflectioncoder.eval.tasks import dataset_file, file_hash, load_humaneval_plus

HUMANEVAL_PLUS = "humanevalplus/HumanEvalPlus-v0.1.10.jsonl.gz"


@pytest.fixture(scope="module")
def humaneval(shared_dir_module):
    data = shared_dir_module / "evaldata"
    return load_humaneval_plus(data), file_hash(dataset_file(data, HUMANEVAL_PLUS))


@pytest.fixture(scope="module")
def shared_dir_module():
    from conftest import SHARED_DIR

    if not SHARED_DIR.is_dir():
        pytest.skip(f"{SHARED_DIR} not found (set REFLECTIONCODER_SHARED)")
    return SHARED_DIR


def _wrapped(task, body: str, header: str = "") -> str:
    """The canonical solution, its result ``r`` returned as ``body``."""
    name = task.entry_point
    return (
        f"{header}{task.prompt}{task.canonical_solution}\n_right = {name}\n\n"
        f"def {name}(*args):\n    r = _right(*args)\n    return {body}\n"
    )


def _verdict(humaneval, task_id: str, solution: str) -> tuple[str, str | None]:
    tasks, source = humaneval
    task = tasks[task_id]
    expected = expected_outputs({task_id: task}, source)[task_id]
    got = check_sample(task, solution, expected)
    return got.base, got.plus


def _big_string_task(humaneval):
    """HumanEval/15 (string_sequence) on inputs whose outputs are a short string and strings
    over the codec's 64 KiB (they cross the pipe as digests), expected outputs made here."""
    task = dataclasses.replace(
        humaneval[0]["HumanEval/15"], base_inputs=[[3], [20000]], plus_inputs=[[30000]]
    )
    env: dict = {}
    exec(task.prompt + task.canonical_solution, env)

    def phase(inputs):
        outs = [codec.encode_output(env[task.entry_point](*i)) for i in inputs]
        return {"out": [result_decode.decode(o) for o in outs], "t": [0.1] * len(inputs)}

    return task, {"base": phase(task.base_inputs), "plus": phase(task.plus_inputs)}


@pytest.mark.parametrize(
    ("body", "want"),
    [("S(r)", ("pass", "pass")), ("S(r + ' ')", ("fail", None)), ("r", ("pass", "pass"))],
)
def test_a_big_string_of_a_str_subclass_equals_the_string(humaneval, body, want):
    """EvalPlus compares with str.__eq__: S(r) == r. The box reads a subclass through its base
    type and ships it whole; the expected string is known by its digest."""
    task, expected = _big_string_task(humaneval)
    solution = _wrapped(task, body, "class S(str):\n    pass\n")
    assert expected["base"]["out"][1].__class__ is codec.Digest  # the case under test
    got = check_sample(task, solution, expected)
    assert (got.base, got.plus) == want, got.reason


@pytest.mark.slow  # 5.5 s (the canonical solution's 2.5 s of CPU, twice); fast neighbours:
# test_a_big_string_of_a_str_subclass_equals_the_string, tests/test_eval_score.py's digests
def test_string_sequence_of_a_million_as_a_str_subclass_passes(humaneval):
    """A 6.9 MB str subclass travels as its string's digest, not whole (over the cap)."""
    task = humaneval[0]["HumanEval/15"]
    solution = _wrapped(task, "S(r)", "class S(str):\n    pass\n")
    assert _verdict(humaneval, "HumanEval/15", solution) == ("pass", "pass")


def test_a_completion_that_imports_numpy_passes(humaneval):
    """EvalPlus's guard sets os.putenv to None and numpy's import calls it; EvalPlus's worker
    has numpy imported already, so the completion passes there and must here."""
    task = humaneval[0]["HumanEval/0"]
    solution = _wrapped(task, "bool(np.bool_(r))", "import numpy as np\n")
    assert _verdict(humaneval, "HumanEval/0", solution) == ("pass", "pass")
