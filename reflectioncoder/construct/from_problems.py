"""Reflection sequences from the user's own problems (``build-data --problems FILE``), resumable.

A problem is one jsonl line ``{id, prompt, tests, reference?, entry_point?, language?}``:
``tests`` are Python assert lines (a list, or one string of lines). Bad problems (no prompt, no
tests, a reference that hangs, kills its process or fails its own tests, ...) are reported with
their reason and skipped; the run goes on.

Resuming: every finished problem is appended to ``OUT`` (its sample) and to
``OUT.progress.jsonl`` (its id and outcome), each line flushed to disk before the next problem
is counted done. A run started again with the same ``--out`` skips the ids found in either
file, so a killed run loses nothing and does no problem twice. A problem the model could not be
reached for (``BackendError``) is not recorded, so the next run tries it again.
"""

from __future__ import annotations

import ast
import fcntl
import json
import os
import random
import re
from collections import Counter
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

from reflectioncoder.construct.backend import Backend, MutationBackend
from reflectioncoder.construct.build import (
    BuildStats,
    attempt_policy,
    failure_kind,
    reflection_sample,
)
from reflectioncoder.construct.execute import ALL_PASSED, Check, checked_assertion, run_tests
from reflectioncoder.data.readers import read_jsonl
from reflectioncoder.data.schema import DataError
from reflectioncoder.errors import UsageError, UserError, ctrl_c_to_main_thread
from reflectioncoder.generate import BackendError
from reflectioncoder.progress import Progress

_DEF_RE = re.compile(r"^\s*def\s+([A-Za-z_]\w*)\s*\(", re.MULTILINE)


@dataclass(frozen=True)
class AssertTest:
    """One of the user's assert lines. ``assert CALL == EXPECTED`` is run as a checked
    assertion that prints the value the call returned, as the template problems do."""

    line: str

    def _eq(self) -> tuple[str, str] | None:
        try:
            node = ast.parse(self.line).body[0]
        except (SyntaxError, IndexError):
            return None
        test = node.test if isinstance(node, ast.Assert) else None
        if (
            isinstance(test, ast.Compare)
            and len(test.ops) == 1
            and isinstance(test.ops[0], ast.Eq)
            and node.msg is None
        ):
            return ast.unparse(test.left), ast.unparse(test.comparators[0])
        return None

    @property
    def call(self) -> str:
        eq = self._eq()
        return eq[0] if eq else self.line.removeprefix("assert").strip()

    @property
    def expected(self) -> str:
        eq = self._eq()
        return eq[1] if eq else "True"

    def judged(self) -> Check:
        """For ``execute.judge_tests``: the assert's test expression (its message dropped)."""
        node = ast.parse(self.line).body[0]
        if not isinstance(node, ast.Assert):
            raise ValueError(f"not an assert line: {self.line!r}")
        return Check(ast.unparse(node.test))

    def checked_assertion(self) -> str:
        eq = self._eq()
        if eq is None:
            return self.line
        return checked_assertion(*eq)


@dataclass(frozen=True)
class UserProblem:
    """A problem from the user's file: the prompt is the instruction, as written."""

    task_id: str
    prompt: str
    tests: tuple[AssertTest, ...]
    solution: str = ""  # the reference ("" when none was given)
    entry_point: str = "the function"
    language: str = "python"

    def instruction(self, style: str = "humaneval") -> str:
        return self.prompt.strip()

    def test_program(self, code: str) -> str:
        checks = "\n".join(t.checked_assertion() for t in self.tests)
        return f"{code.rstrip()}\n\n\n{checks}\nprint({ALL_PASSED!r})\n"


def parse_problem(row: object, source: str) -> UserProblem:
    """One decoded line -> a UserProblem, or DataError naming the field."""
    if not isinstance(row, dict):
        raise DataError(source, "<problem>", "expected a JSON object")
    pid = row.get("id", row.get("task_id"))
    if not isinstance(pid, str | int) or isinstance(pid, bool) or str(pid).strip() == "":
        raise DataError(source, "id", f"expected a non-empty string or number, got {pid!r}")
    prompt = row.get("prompt")
    if "prompt" in row and not isinstance(prompt, str):
        raise DataError(source, "prompt", f"expected a string, got {_json_kind(prompt)}")
    if not isinstance(prompt, str) or not prompt.strip():
        raise DataError(source, "prompt", "missing or empty")
    language = row.get("language") or "python"
    if str(language).lower() not in ("python", "py"):
        raise DataError(source, "language", f"{language!r} is not supported (python only)")
    tests = row.get("tests")
    if isinstance(tests, str):
        tests = [t for t in tests.splitlines() if t.strip()]
    if not isinstance(tests, list) or not tests:
        wanted = "a non-empty list of assert lines, or one string of them"
        got = f"expected {wanted}, got {_json_kind(tests)}" if "tests" in row else None
        raise DataError(source, "tests", got or f"missing ({wanted})")
    for i, line in enumerate(tests):
        if not isinstance(line, str):
            raise DataError(source, f"tests[{i}]", f"expected a string, got {_json_kind(line)}")
    for i, line in enumerate(tests):
        try:
            body = ast.parse(line.strip()).body
        except SyntaxError as e:
            raise DataError(source, f"tests[{i}]", f"not Python: {e.msg}") from None
        if len(body) != 1 or not isinstance(body[0], ast.Assert):  # each is judged as one
            raise DataError(source, f"tests[{i}]", f"not one assert statement: {line.strip()!r}")
    reference = row.get("reference") or ""
    if not isinstance(reference, str):
        raise DataError(source, "reference", "expected a string")
    if reference:
        try:
            ast.parse(reference)
        except SyntaxError as e:
            raise DataError(source, "reference", f"not Python: {e.msg} (line {e.lineno})") from None
    entry = row.get("entry_point")
    if not isinstance(entry, str) or not entry:
        found = _DEF_RE.search(reference) or _DEF_RE.search(prompt)
        entry = found.group(1) if found else "the function"
    return UserProblem(
        str(pid), prompt, tuple(AssertTest(t.strip()) for t in tests), reference, entry
    )


def _json_kind(value: object) -> str:
    """A JSON value as the file spells it (null, 5); a list or object by its kind."""
    if isinstance(value, list):
        return "an empty list" if not value else "a list"
    return "an object" if isinstance(value, dict) else json.dumps(value)


def load_problems(path: str | Path) -> tuple[list[UserProblem], list[tuple[str, str]]]:
    """The good problems of a jsonl file, and (id or file:line, reason) of the bad ones."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--problems: {path} not found")
    problems: list[UserProblem] = []
    bad: list[tuple[str, str]] = []
    seen: set[str] = set()
    for source, row in read_jsonl(path):
        try:
            if isinstance(row, DataError):
                raise row
            problem = parse_problem(row, source)
            if problem.task_id in seen:
                raise DataError(source, "id", f"{problem.task_id!r} appears twice")
        except DataError as e:
            bad.append((source, f"{e.field}: {e.reason}"))
            continue
        seen.add(problem.task_id)
        problems.append(problem)
    return problems, bad


def check_reference(problem: UserProblem, timeout_s: float) -> str | None:
    """Why the problem's reference is unusable (None: it passes its tests in the sandbox)."""
    run = run_tests(problem, problem.solution, timeout_s=timeout_s)
    if run.passed:
        return None
    # the reason is the sandbox's (how the run ended), never read off an exit status
    kind = run.ending.kind if run.ending is not None else ""
    if run.timed_out or kind == "timeout":
        return f"the reference hangs (no end within {timeout_s:g} s)"
    if kind == "memory":
        return "the reference runs out of memory (killed at the run's memory limit)"
    if kind == "signal":
        return f"the reference kills its process: {run.ending.describe()}"  # type: ignore[union-attr]
    if run.exit_code == 0:
        return "the reference exits before its tests have run (exit code 0)"
    last = (run.output.strip().splitlines() or ["no output"])[-1]
    return f"the tests fail on the reference: {last}"


# ----------------------------------------------------------------------------- the run


@dataclass
class RunSummary:
    """What a ``--problems`` run did (this run and, from the files, the runs before it)."""

    problems: int = 0
    resumed: int = 0  # done by an earlier run
    written: int = 0  # samples in the output (earlier runs' included)
    new: int = 0  # samples written by this run
    final_passed: int = 0
    rounds: Counter = field(default_factory=Counter)
    skipped: dict[str, str] = field(default_factory=dict)  # id or file:line -> reason
    failed: Counter = field(default_factory=Counter)  # no sample: by kind
    left: Counter = field(default_factory=Counter)  # not done (model unreachable): by error
    executions: int = 0

    def count_sample(self, sample: dict) -> None:
        self.written += 1
        self.rounds[sample["construct"]["rounds"]] += 1
        self.final_passed += bool(sample["construct"]["final_passed"])

    def summary(self) -> str:
        rounds = ", ".join(f"{k}: {v}" for k, v in sorted(self.rounds.items())) or "-"
        failed = ", ".join(f"{k}: {v}" for k, v in sorted(self.failed.items())) or "none"
        rate = f"{self.final_passed}/{self.written}" if self.written else "-"
        text = (
            f"{self.problems} problems ({self.resumed} done before): {self.written} samples "
            f"({self.new} new); rounds per problem {{{rounds}}}; final answers pass {rate}; "
            f"bad problems skipped {len(self.skipped)}; failed {{{failed}}}; "
            f"{self.executions} sandboxed runs"
        )
        if self.left:
            errors = "; ".join(f"{k} ({v})" for k, v in self.left.items())
            text += f"; NOT DONE (run again to retry): {sum(self.left.values())}: {errors}"
        return text


def progress_path(out: str | Path) -> Path:
    out = Path(out)
    return out.with_name(out.name.removesuffix(".jsonl") + ".progress.jsonl")


def _complete_lines(path: Path, key: str) -> list[dict]:
    """The file's complete lines as records; a partial last line (a killed write) is cut off
    the file, but only once every complete line is a record with ``key``: a file this command
    did not write (``--out`` naming the problems or a training file) is refused untouched."""
    if not path.is_file():
        return []
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    records = []
    for lineno, line in enumerate(data[:end].decode("utf-8", "replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            record = None
        if not isinstance(record, dict) or key not in record:
            raise UserError(
                f"not written by build-data (no {key!r}); choose another --out",
                file=path,
                line=lineno,
            )
        records.append(record)
    if end != len(data):
        with path.open("r+b") as f:
            f.truncate(end)
    return records


def done_ids(out: Path, summary: RunSummary | None = None) -> set[str]:
    """Ids an earlier run finished: in the progress log or with a sample in ``out``. With
    ``summary``, their outcomes are counted into it (the summary covers the whole output)."""
    done = set()
    records = {}
    samples = _complete_lines(out, "task_id")  # checked first: the file users name
    for record in _complete_lines(progress_path(out), "id"):
        done.add(str(record["id"]))
        records[str(record["id"])] = record
    for sample in samples:
        done.add(str(sample["task_id"]))
        if summary is not None:
            summary.count_sample(sample)
    if summary is not None:
        for pid, record in records.items():
            if record["status"] == "skip":
                summary.skipped[pid] = record["reason"]
            elif record["status"] == "fail":
                summary.failed[record["reason"]] += 1
    return done


def _append(f, record: dict) -> None:
    f.write(json.dumps(record, ensure_ascii=False) + "\n")
    f.flush()
    os.fsync(f.fileno())


def _one(
    problem: UserProblem, backend: Backend, seed: int, max_rounds: int, timeout_s: float
) -> tuple[dict | None, str | None, BuildStats]:
    """(sample, None) or (None, why no sample); BackendError propagates (not done)."""
    stats = BuildStats()
    if isinstance(backend, MutationBackend) and not problem.solution:
        return None, "skip:the mutation backend needs a reference", stats
    if problem.solution:
        stats.executions += 1
        reason = check_reference(problem, timeout_s)
        if reason is not None:
            return None, f"skip:{reason}", stats
    rng = random.Random(f"{seed}/{problem.task_id}")
    try:
        sample = reflection_sample(
            problem,
            backend,
            rng,
            max_rounds=max_rounds,
            timeout_s=timeout_s,
            stats=stats,
            **attempt_policy(backend),
        )
    except UserError:
        raise
    except ValueError as e:  # a reply without code, a reference that admits no mutation
        return None, f"fail:{failure_kind(e)}", stats
    if sample is None:
        kind = stats.rejected.most_common(1)[0][0] if stats.rejected else "no sample"
        return None, f"fail:{kind}", stats
    return sample, None, stats


def build_from_problems(
    problems_file: str | Path,
    out: str | Path,
    backend: Backend,
    workers: int = 8,
    max_rounds: int = 3,
    timeout_s: float = 5.0,
    seed: int = 0,
    progress: bool = True,
) -> RunSummary:
    """Build one reflection sample per problem of ``problems_file`` into ``out`` (appending,
    resumable). Returns the run's summary."""
    if workers < 1:
        raise ValueError(f"workers: expected at least 1, got {workers}")
    if max_rounds < 1:
        raise ValueError(f"max_rounds: expected at least 1, got {max_rounds}")
    out = Path(out)
    if Path(problems_file).resolve() in (out.resolve(), progress_path(out).resolve()):
        raise UsageError(f"{out} is the problems file; name a new .jsonl", field="--out")
    problems, bad = load_problems(problems_file)
    if not problems and not bad:
        raise UserError("no problems in it (one JSON object a line)", file=problems_file)
    if not problems:  # a wrong file, or a wrong format: say so rather than write nothing
        where, reason = bad[0]
        raise UserError(f"none of its {len(bad)} rows is a problem; the first, {where}: {reason}")
    log_path = progress_path(out)
    if not log_path.exists() and out.is_file() and out.stat().st_size:  # before the log exists
        raise UserError(
            f"not written by build-data --problems (no {log_path.name} beside it): appending "
            "would mix its samples with this run's; choose another --out",
            file=out,
            line=1,
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    summary = RunSummary(problems=len(problems) + len(bad))
    summary.skipped.update(bad)
    with progress_path(out).open("a", encoding="utf-8") as log:
        _lock(log, out)  # one run per output: two would do problems twice
        done = done_ids(out, summary)
        todo = [p for p in problems if p.task_id not in done]
        summary.resumed = len(problems) - len(todo)
        _run(todo, out, log, summary, backend, workers, (seed, max_rounds, timeout_s), progress)
    return summary


def _lock(log, out: Path) -> None:
    try:
        fcntl.flock(log.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise UserError("another build-data run is writing to it", file=out) from None


def _run(todo, out, log, summary, backend, workers, settings, progress: bool) -> None:
    """Build ``todo`` on ``workers`` threads; each finished problem is recorded at once."""
    total = summary.resumed + len(todo)
    # the time left at this run's rate (not counting the resumed problems), while it can know:
    # not once every problem left is running (a hanging one takes its whole time limit)
    bar = Progress(
        total,
        "problems",
        unit="problem",
        enabled=progress,
        initial=summary.resumed,
        parallel=workers,
    )
    with (
        out.open("a", encoding="utf-8") as samples,
        ThreadPoolExecutor(max_workers=workers, initializer=ctrl_c_to_main_thread) as pool,
    ):
        pending = {pool.submit(_one, p, backend, *settings): p for p in todo}
        try:
            while pending:
                finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in finished:
                    problem = pending.pop(future)
                    _record(future, problem, samples, log, summary)
                    bar.update()
        finally:
            for future in pending:  # a user error (e.g. HTTP 401) stops the run
                future.cancel()
            bar.close()


def _record(future, problem: UserProblem, samples, log, summary: RunSummary) -> None:
    """Write one finished problem: its sample (then its progress line), or why it has none."""
    try:
        sample, why, stats = future.result()
    except BackendError as e:
        summary.left[str(e).split(" (after")[0]] += 1
        return
    summary.executions += stats.executions
    if sample is not None:
        _append(samples, sample)  # first the sample: a kill between the two loses nothing
        rounds = sample["construct"]["rounds"]
        _append(log, {"id": problem.task_id, "status": "written", "rounds": rounds})
        summary.count_sample(sample)
        summary.new += 1
        return
    status, reason = why.split(":", 1)
    _append(log, {"id": problem.task_id, "status": status, "reason": reason})
    if status == "skip":
        summary.skipped[problem.task_id] = reason
    else:
        summary.failed[reason] += 1
