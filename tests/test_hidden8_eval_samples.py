"""`reflectioncoder evaluate --samples` as a user runs it (a subprocess), on samples files with odd
contents: uneven sample counts per task in shuffled order, CRLF line ends, blank lines, extra
fields, whole programs under ``solution``, samples that pass the base tests and fail the plus
tests. Every pass@k is checked against the unbiased estimator computed here from the plan
(exact fractions), and every sample's verdict against what it was written to do. Bad rows give
one line naming file, line and field (issue 5, issue 21's one sample reader)."""

from __future__ import annotations

import gzip
import json
import random
import subprocess
import sys
from fractions import Fraction
from math import comb
from pathlib import Path

import pytest

from reflectioncoder.cli import main
from reflectioncoder.testing.http_stub import JsonHandler, serving

REPO_ROOT = Path(__file__).resolve().parents[1]


def _evaluate(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "reflectioncoder", "evaluate", "--no-progress", *argv],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def _humaneval_plus(shared_dir: Path, n: int) -> list[dict]:
    path = shared_dir / "evaldata" / "humanevalplus" / "HumanEvalPlus-v0.1.10.jsonl.gz"
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for _, line in zip(range(n), f, strict=False)]


def _base_only(task: dict) -> str:
    """A whole program right on the task's base inputs and wrong on every other input."""
    seen = sorted({repr(list(i)) for i in task["base_input"]})
    name = task["entry_point"]
    return (
        f"{task['prompt']}{task['canonical_solution']}\n"
        f"_right = {name}\n_SEEN = set({seen!r})\n\n"
        f"def {name}(*args):\n"
        "    if repr(list(args)) in _SEEN:\n        return _right(*args)\n    return None\n"
    )


# What each kind of sample does: (row maker, passes base, passes plus).
def _kinds(task: dict) -> dict:
    tid = task["task_id"]
    return {
        "right": ({"task_id": tid, "completion": task["canonical_solution"]}, True, True),
        "right_whole": (
            {"task_id": tid, "solution": task["prompt"] + task["canonical_solution"], "n": 1},
            True,
            True,
        ),
        "wrong": ({"task_id": tid, "completion": "    return None\n"}, False, False),
        "raises": ({"task_id": tid, "completion": "    raise ValueError('no')\n"}, False, False),
        "no_parse": ({"task_id": tid, "completion": "    return (\n"}, False, False),
        "base_only": ({"task_id": tid, "solution": _base_only(task)}, True, False),
    }


def _unbiased(counts: list[tuple[int, int]], k: int) -> float:
    """Mean over tasks of 1 - C(n - c, k) / C(n, k) (Chen et al. 2021), exactly."""
    total = sum(Fraction(1) - Fraction(comb(n - c, k), comb(n, k)) for n, c in counts)
    return float(total / len(counts))


def test_uneven_shuffled_samples_score_the_unbiased_estimator(seed, shared_dir, tmp_path):
    rng = random.Random(seed)
    tasks = _humaneval_plus(shared_dir, 4)
    plan = []  # (task index, kind) in file order
    for t in range(len(tasks)):
        plan += [(t, rng.choice(list(_kinds(tasks[t])))) for _ in range(rng.randint(3, 6))]
    rng.shuffle(plan)
    lines = [json.dumps(_kinds(tasks[t])[kind][0]) for t, kind in plan]
    for _ in range(3):  # blank and whitespace-only lines anywhere
        lines.insert(rng.randrange(len(lines) + 1), rng.choice(["", "   ", "\t"]))
    samples = tmp_path / "odd samples.jsonl"
    samples.write_bytes("\r\n".join(lines).encode("utf-8") + b"\r\n")
    result = tmp_path / "out" / "result.json"

    done = _evaluate("--task", "humaneval", "--samples", str(samples), "--limit", "4",
                     "--data-dir", str(shared_dir / "evaldata"), "--json", str(result),
                     "--k", "1", "2", "3")  # fmt: skip
    assert done.returncode == 0, done.stderr
    got = json.loads(result.read_text())

    base_counts, plus_counts = [], []
    for t, task in enumerate(tasks):
        mine = [kind for i, kind in plan if i == t]
        want = [_kinds(task)[kind][1:] for kind in mine]
        rows = got["details"][task["task_id"]]
        assert [r["completion_id"] for r in rows] == list(range(len(mine)))
        assert [(r["base"] == "pass", r["plus"] == "pass") for r in rows] == want, mine
        for r, kind in zip(rows, mine, strict=True):
            if not _kinds(task)[kind][1]:
                assert r["plus"] is None  # plus tests run only after the base tests pass
        base_counts.append((len(want), sum(b for b, _ in want)))
        plus_counts.append((len(want), sum(b and p for b, p in want)))
    for k in (1, 2, 3):
        assert got["scores"]["HumanEval"][f"pass@{k}"] == pytest.approx(
            _unbiased(base_counts, k), abs=1e-12
        )
        assert got["scores"]["HumanEval+"][f"pass@{k}"] == pytest.approx(
            _unbiased(plus_counts, k), abs=1e-12
        )
    assert f"{100 * _unbiased(plus_counts, 3):.1f}" in done.stdout  # the table's HumanEval+ row


def test_default_k_is_each_of_1_10_100_every_task_allows(shared_dir, tmp_path):
    """Ten samples of one task, two right: pass@1 and pass@10 (not @100), both exact."""
    task = _humaneval_plus(shared_dir, 1)[0]
    kinds = _kinds(task)
    rows = [kinds["right"][0]] * 2 + [kinds["wrong"][0]] * 8
    samples = tmp_path / "ten.jsonl"
    samples.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = tmp_path / "r.json"
    assert main(["evaluate", "--task", "humaneval", "--samples", str(samples), "--limit", "1",
                 "--base-only", "--data-dir", str(shared_dir / "evaldata"), "--no-progress",
                 "--json", str(result)]) == 0  # fmt: skip
    scores = json.loads(result.read_text())["scores"]["HumanEval"]
    assert scores == {"pass@1": pytest.approx(0.2), "pass@10": pytest.approx(1.0)}


GOOD = {"task_id": "HumanEval/0", "completion": "    return True\n"}


@pytest.mark.parametrize(
    ("row", "field", "words"),
    [
        ({"task_id": "HumanEval/0", "solution": 5}, "solution", "expected a string, got 5"),
        ({"task_id": "HumanEval/0", "solution": None, "completion": "    return 1\n"},
         "solution", "expected a string, got null"),
        ({"task_id": ["HumanEval/0"], "completion": "x"}, "task_id", 'got ["HumanEval/0"]'),
        ({"task_id": "HumanEval/0", "completion": "\ud800"}, "completion", "lone surrogate"),
    ],
)  # fmt: skip
def test_a_bad_row_is_one_line_naming_file_line_and_field(row, field, words, tmp_path, capsys):
    samples = tmp_path / "s.jsonl"
    samples.write_text(json.dumps(GOOD) + "\n\n" + json.dumps(row) + "\n")
    code = main(["evaluate", "--task", "humaneval", "--samples", str(samples), "--limit", "1"])
    err = capsys.readouterr().err
    assert code == 1 and len(err.splitlines()) == 1, err
    assert err.startswith(f"reflectioncoder evaluate: {samples}:3: {field}: "), err
    assert words in err


def test_the_cli_names_the_solution_field_it_refuses(tmp_path):
    """The same, through the installed command: the row's program is in ``solution``."""
    samples = tmp_path / "s.jsonl"
    samples.write_text(json.dumps({"task_id": "Mbpp/2", "solution": ["def f(): pass"]}) + "\n")
    done = _evaluate("--task", "mbpp", "--samples", str(samples), "--limit", "1")
    assert done.returncode == 1
    assert done.stderr == (
        f"reflectioncoder evaluate: {samples}:1: solution: expected a string, "
        'got ["def f(): pass"]\n'
    )


class _Scripted(JsonHandler):
    """An OpenAI-compatible /v1/completions server: for each prompt, n choices, each the task's
    canonical function or a wrong one as ``plan`` says (the task found by its entry point)."""

    tasks: list[dict] = []
    plan: dict[str, list[bool]] = {}
    served: dict[str, int] = {}

    def do_POST(self) -> None:  # noqa: N802
        body = self.read_json()
        task = next(t for t in self.tasks if f"def {t['entry_point']}(" in body["prompt"])
        tid = task["task_id"]
        choices = []
        for i in range(body.get("n", 1)):
            k = self.served.get(tid, 0)
            self.served[tid] = k + 1
            right = self.plan[tid][k]
            code = task["prompt"] + (task["canonical_solution"] if right else "    return None\n")
            choices.append({"index": i, "text": code + "\n```<|endofblock|><|endofmessage|>"})
        self.reply({"choices": choices})


def test_sampled_generation_scores_each_sample_and_the_unbiased_estimator(
    seed, shared_dir, tmp_path
):
    """`evaluate --model NAME --backend openai --n-samples 4 --temperature 0.8 --k 1 2 4`:
    every choice becomes a sample in order, and pass@k is the estimator of what was served."""
    rng = random.Random(seed)
    tasks = _humaneval_plus(shared_dir, 3)
    _Scripted.tasks = tasks
    _Scripted.plan = {t["task_id"]: [rng.random() < 0.5 for _ in range(4)] for t in tasks}
    _Scripted.served = {}
    result = tmp_path / "sampled.json"
    with serving(_Scripted, threaded=False) as base:
        argv = ["evaluate", "--task", "humaneval", "--model", "scripted", "--backend", "openai",
                "--base-url", base, "--n-samples", "4",
                "--temperature", "0.8", "--k", "1", "2", "4", "--limit", "3", "--base-only",
                "--no-progress", "--data-dir", str(shared_dir / "evaldata"),
                "--json", str(result)]  # fmt: skip
        code = main(argv)
    assert code == 0
    assert _Scripted.served == {t["task_id"]: 4 for t in tasks}
    got = json.loads(result.read_text())
    samples = result.with_suffix(".samples.jsonl").read_text().splitlines()
    assert [json.loads(s)["task_id"] for s in samples] == [
        t["task_id"] for t in tasks for _ in range(4)
    ]
    counts = []
    for t in tasks:
        want = _Scripted.plan[t["task_id"]]
        rows = got["details"][t["task_id"]]
        assert [r["base"] == "pass" for r in rows] == want
        counts.append((4, sum(want)))
    for k in (1, 2, 4):
        assert got["scores"]["HumanEval"][f"pass@{k}"] == pytest.approx(
            _unbiased(counts, k), abs=1e-12
        )


@pytest.mark.parametrize(
    ("language", "words"),
    [(5, "expected a string, got 5"), (None, "expected a string, got null"),
     (["python"], 'expected a string, got ["python"]'), ("missing", "missing (--task multiple)")],
)  # fmt: skip
def test_a_multiple_row_names_what_is_wrong_with_its_language(language, words, tmp_path, capsys):
    """--task multiple: a row whose language is there but not a string was said 'missing'."""
    row = {"task_id": "HumanEval_0_has_close_elements", "completion": "    return True\n"}
    if language != "missing":
        row["language"] = language
    samples = tmp_path / "multi.jsonl"
    good = {**row, "language": "python"}
    samples.write_text(json.dumps(good) + "\n" + json.dumps(row) + "\n")
    code = main(["evaluate", "--task", "multiple", "--samples", str(samples), "--limit", "1"])
    err = capsys.readouterr().err
    assert code == 1 and err == f"reflectioncoder evaluate: {samples}:2: language: {words}\n"


def test_missing_tasks_are_named_in_the_benchmarks_order(shared_dir, tmp_path, capsys):
    """Samples of HumanEval/0-11 scored without --limit: the tasks named are the next ones
    (was HumanEval/100, /101, /102: sorted as text), and --limit 12 is suggested."""
    task = _humaneval_plus(shared_dir, 1)[0]
    body = task["canonical_solution"]
    rows = [{"task_id": f"HumanEval/{i}", "completion": body} for i in range(12)]
    samples = tmp_path / "first12.jsonl"
    samples.write_text("".join(json.dumps(r) + "\n" for r in rows))
    code = main(["evaluate", "--task", "humaneval", "--samples", str(samples),
                 "--data-dir", str(shared_dir / "evaldata")])  # fmt: skip
    assert code == 1
    assert capsys.readouterr().err == (
        f"reflectioncoder evaluate: {samples}: no sample for 152 tasks, e.g. ['HumanEval/12', "
        "'HumanEval/13', 'HumanEval/14'] (the samples are of the first 12 tasks: --limit 12 "
        "scores those)\n"
    )
    rows[3]["task_id"] = "HumanEval/40"  # not a prefix: no --limit suggested
    samples.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["evaluate", "--task", "humaneval", "--samples", str(samples),
                 "--data-dir", str(shared_dir / "evaldata")]) == 1  # fmt: skip
    assert "e.g. ['HumanEval/3', 'HumanEval/12', 'HumanEval/13']\n" in capsys.readouterr().err
