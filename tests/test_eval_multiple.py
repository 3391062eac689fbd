"""MultiPL-E scoring per language whose toolchain is here: hand-written correct and incorrect
completions of one task (add), and Python's canonical solutions (its file has them)."""

from __future__ import annotations

import json
import random

import pytest

from reflectioncoder.eval import multiple as ml
from reflectioncoder.eval.tasks import load_multiple, multiple_languages

TASK = "HumanEval_53_add"
# Completions continue the prompt (which ends with the function's opening line).
CORRECT = {
    "cpp": "    return x + y;\n",
    "java": "        return x + y;\n",
    "js": "  return x + y;\n}\n",
    "rs": "    x + y\n",
    "go": "    return x + y\n}\n",
    "php": "    return $x + $y;\n}\n",
    "sh": "    echo $(( $1 + $2 ))\n",
    "python": "    return x + y\n",
}
WRONG = {  # compiles, runs, gives a wrong answer for some inputs
    "cpp": "    return x + y + (x == 7);\n",
    "java": "        return x + y + (x == 7 ? 1 : 0);\n",
    "js": "  return x + y + (x === 7 ? 1 : 0);\n}\n",
    "rs": "    x + y + if x == 7 { 1 } else { 0 }\n",
    "go": "    if x == 7 {\n        return x + y + 1\n    }\n    return x + y\n}\n",
    "php": "    return $x + $y + ($x == 7 ? 1 : 0);\n}\n",
    "sh": '    if [ "$1" = 7 ]; then echo $(( $1 + $2 + 1 )); else echo $(( $1 + $2 )); fi\n',
    "python": "    return x + y + (x == 7)\n",
}
BROKEN = {  # does not compile / parse
    "cpp": "    return x + ;\n",
    "java": "        return x + ;\n",
    "js": "  return x + ;\n}\n",
    "rs": "    x + \n",
    "go": "    return x + \n}\n",
    "php": "    return $x + ;\n}\n",
    "sh": "    echo $(( $1 + ))\n    exit 0\n",
    "python": "    return x +\n",
}


@pytest.mark.parametrize("lang", list(CORRECT))
def test_language(lang, shared_dir):
    problem = ml.toolchain_problem(lang)
    if problem:
        pytest.skip(problem)
    tasks = load_multiple(shared_dir / "evaldata", lang)
    tid = "Python/53" if lang == "python" else TASK
    samples = [
        {"task_id": tid, "completion": c} for c in (CORRECT[lang], WRONG[lang], BROKEN[lang])
    ]
    res = ml.score_multiple_samples(tasks, samples, parallel=2)
    assert [r.status for r in res] == ["pass", "fail", "fail"], [r.stderr_tail for r in res]
    assert [r.completion_id for r in res] == [0, 1, 2]


def test_wrong_completion_is_exercised(shared_dir):
    """The WRONG completions differ only at x == 7: the add tests must call add(7, ...)."""
    tasks = load_multiple(shared_dir / "evaldata", "cpp")
    assert "candidate((7)" in tasks[TASK].tests


def test_python_canonical_solutions(shared_dir, seed):
    rng = random.Random(seed)
    path = shared_dir / "evaldata" / "multipl_e" / "humaneval-python.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    picked = rng.sample(rows, 4)
    tasks = load_multiple(shared_dir / "evaldata", "python")
    samples = [{"task_id": r["task_id"], "completion": r["canonical_solution"]} for r in picked]
    samples += [{"task_id": r["task_id"], "completion": "    return None\n"} for r in picked[:2]]
    res = ml.score_multiple_samples(tasks, samples, parallel=2)
    assert [r.status for r in res] == ["pass"] * 4 + ["fail"] * 2, [r.stderr_tail for r in res]


def test_missing_toolchains_are_named(shared_dir):
    for lang in multiple_languages(shared_dir / "evaldata"):
        problem = ml.toolchain_problem(lang)
        assert problem is None or f"multiple-{lang}" in problem
    assert "skipped" in (ml.toolchain_problem("rkt") or "skipped")
    assert set(ml.available_languages()) <= set(ml.LANGUAGES)
