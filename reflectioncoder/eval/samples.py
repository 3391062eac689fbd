"""Samples, read and checked in one place for every benchmark.

A sample is ``{"task_id", "completion"}`` (EvalPlus's format; for HumanEval and MBPP
``"solution"`` instead gives the whole program) and, for ``--task multiple``, ``"language"``.
``read_samples`` reads a user's file (an error names its line and field); ``number_samples``
checks a list against the benchmark's tasks and numbers each sample within its task (its
``completion_id``, in file order), which is what the scorers run; ``select_samples`` keeps the
samples of the tasks asked for and settles which pass@k they allow.
"""

from __future__ import annotations

import collections
import json
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from reflectioncoder.errors import UsageError, UserError, lone_surrogate
from reflectioncoder.eval.tasks import read_jsonl

__all__ = ["Sample", "number_samples", "read_samples", "select_samples"]


@dataclass(frozen=True)
class Sample:
    """One sample to score: ``text`` is the completion (what follows the task's prompt), or
    the whole program when ``whole``."""

    task_id: str
    completion_id: int
    text: str
    whole: bool = False


def _text_field(row: Mapping, solutions: bool) -> str:
    """The field holding a row's program text: ``"solution"`` wins when ``solutions``."""
    return "solution" if solutions and "solution" in row else "completion"


def _text_problem(row: Mapping, solutions: bool) -> str | None:
    """What is wrong with a row's program text (in ``_text_field``)."""
    got = row.get(_text_field(row, solutions))
    if not isinstance(got, str):
        return f"expected a string, got {json.dumps(got)}"
    return lone_surrogate(got)  # a compiled language's source file cannot hold one


def read_samples(
    path: Path,
    *,
    solutions: bool = True,
    languages: Collection[str] | None = None,
    tasks: tuple[Collection[str], str] | None = None,
) -> list[dict]:
    """The rows of a samples file (JSON lines). ``languages``: each row must name one of
    these (``--task multiple``); ``tasks``: (the benchmark's task ids, its --task name), each
    row's task among them. A bad row is a UserError naming its line and field."""
    rows, lines = [], []
    for n, row in read_jsonl(path):
        if not isinstance(row, dict):
            kind = {list: "an array", str: "a string"}.get(type(row), json.dumps(row))
            raise UserError(f"expected a JSON object, got {kind}", file=path, line=n)
        if "task_id" not in row:
            raise UserError("missing", file=path, line=n, field="task_id")
        if not isinstance(row["task_id"], str):  # a list or object: unhashable below
            got = json.dumps(row["task_id"])
            raise UserError(f"expected a string, got {got}", file=path, line=n, field="task_id")
        if tasks is not None and row["task_id"] not in tasks[0]:
            raise UserError(
                f"{row['task_id']!r} is not a task of --task {tasks[1]}",
                file=path,
                line=n,
                field="task_id",
            )
        problem = _text_problem(row, solutions)
        if problem:
            raise UserError(problem, file=path, line=n, field=_text_field(row, solutions))
        if tasks is not None and tasks[1].startswith("multiple-") and "language" in row:
            _check_own_language(row["language"], tasks[1], path, n)
        rows.append(row)
        lines.append(n)
    if languages is not None:
        _check_languages(rows, lines, path, languages)
    return rows


def _check_own_language(language: object, task: str, path: Path, n: int) -> None:
    """A row of ``--task multiple-LANG`` that names its language names LANG (MultiPL-E's task
    ids are the same in every language: a Java row would be run, and fail, as C#)."""
    own = task.removeprefix("multiple-")
    if language != own:
        raise UserError(
            f"{json.dumps(language)} is not --task {task}'s language ({own}); a file of several "
            "languages is scored with --task multiple (--languages LANG for some of them)",
            file=path,
            line=n,
            field="language",
        )


def _check_languages(
    rows: list[dict], lines: list[int], path: Path, known: Collection[str]
) -> None:
    for n, row in zip(lines, rows, strict=True):
        if "language" not in row:
            raise UserError("missing (--task multiple)", file=path, line=n, field="language")
        if not isinstance(row["language"], str):
            got = f"expected a string, got {json.dumps(row['language'])}"
            raise UserError(got, file=path, line=n, field="language")
        if row["language"] not in known:
            raise UserError(
                f"{row['language']!r} is not a MultiPL-E language here ({' '.join(sorted(known))})",
                file=path,
                line=n,
                field="language",
            )


def number_samples(
    tasks: Collection[str], samples: Iterable[Mapping], *, solutions: bool = True
) -> list[Sample]:
    """``samples`` as ``Sample``s, numbered within their task in order. A sample of no task in
    ``tasks``, or without a string to run, is a ValueError naming it (``samples:N:field``)."""
    out = []
    counts: collections.Counter[str] = collections.Counter()
    for n, s in enumerate(samples, 1):
        tid = s.get("task_id")
        if not isinstance(tid, str) or tid not in tasks:
            raise ValueError(f"samples:{n}:task_id: {tid!r} is not a task of this benchmark")
        problem = _text_problem(s, solutions)
        if problem:
            raise ValueError(f"samples:{n}:{_text_field(s, solutions)}: {problem}")
        field = _text_field(s, solutions)
        out.append(Sample(tid, counts[tid], s[field], field == "solution"))
        counts[tid] += 1
    return out


def select_samples(
    tasks: Collection[str],
    rows: list[dict],
    *,
    subset: bool,
    k: Iterable[int] | None,
    file: Path | None,
) -> tuple[list[dict], tuple[int, ...]]:
    """The rows of ``tasks`` (``subset``: the tasks are the first N of the benchmark, the
    other rows are dropped) and the pass@k to report: ``k``, or those of 1, 10, 100 that every
    task's samples allow. Every task needs a sample (a UserError naming ``file`` otherwise)."""
    if subset:
        rows = [s for s in rows if s["task_id"] in tasks]
    have = {s["task_id"] for s in rows}
    missing = [t for t in tasks if t not in have]  # in the benchmark's order
    if missing:
        first = len(tasks) - len(missing)
        hint = (
            f" (the samples are of the first {first} tasks: --limit {first} scores those)"
            if not subset and first and have == set(list(tasks)[:first])
            else ""
        )
        raise UserError(f"no sample for {len(missing)} tasks, e.g. {missing[:3]}{hint}", file=file)
    per_task = collections.Counter(s["task_id"] for s in rows)
    fewest = min(per_task[t] for t in tasks)
    if k is None:
        return rows, tuple(k for k in (1, 10, 100) if k <= fewest)
    k = tuple(k)
    if max(k) > fewest:
        raise UsageError(
            f"--k {max(k)}: some tasks have only {fewest} sample(s); pass@k needs k <= "
            "samples per task"
        )
    return rows, k
