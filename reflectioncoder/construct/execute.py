"""Run a program in the evaluation sandbox and keep what the interpreter printed.

construct/ never runs a written or mutated program itself: every run goes through
``reflectioncoder.eval.sandbox.run_python`` (the one place that runs untrusted code).
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from reflectioncoder.eval.sandbox.records import Ending

# The sandbox writes the program to a temporary file whose name changes from run to run; the
# traceback names it. It is replaced by this fixed name so a seeded build is reproducible.
PROGRAM_NAME = "main.py"
MAX_OUTPUT_CHARS = 2000
# A test program's last line prints this (the feedback a model reads). It decides nothing:
# the program can print it and exit; ``run_tests`` judges outside (``judge_tests``).
ALL_PASSED = "All tests passed."
_FILE_RE = re.compile(r'File "([^"]+)"')


@dataclass(frozen=True)
class Execution:
    """What running a program printed (stdout then stderr), whether its tests passed, and how
    it ended (the sandbox's ``Ending``: a time limit, a memory kill, a signal, an exit code)."""

    output: str
    passed: bool
    timed_out: bool
    exit_code: int | None
    ending: Ending | None = None


def _normalise(text: str) -> str:
    """Program paths -> PROGRAM_NAME (other files' paths kept), trailing space trimmed, capped."""

    def fix(match: re.Match) -> str:
        path = match.group(1)
        if path.startswith("<") or "/lib/python" in path or "site-packages" in path:
            return match.group(0)
        return f'File "{PROGRAM_NAME}"'

    text = _FILE_RE.sub(fix, text).rstrip()
    if len(text) > MAX_OUTPUT_CHARS:  # keep the end: the error is in the last lines
        text = "...\n" + text[-MAX_OUTPUT_CHARS:]
    return text


def run_program(source: str, timeout_s: float = 5.0, memory_mb: int = 512) -> Execution:
    """Run ``source`` as a whole program in the sandbox and keep what it printed; ``passed``
    here only says it LOOKED passed (exit code 0, no timeout, :data:`ALL_PASSED` the last line
    printed), which the program itself can fake: verdicts come from ``run_tests``."""
    from reflectioncoder.eval.sandbox import run_python

    result = run_python(source, timeout_s=timeout_s, memory_mb=memory_mb)
    stdout = result.stdout or ""
    stderr = result.stderr or ""
    output = stdout + ("\n" if stdout and stderr and not stdout.endswith("\n") else "") + stderr
    # a time limit whoever enforced it: the run's CPU clock, the wall clock, or the kernel's
    # per-process CPU limit (the program then dies of SIGXCPU or SIGKILL: not a crash)
    timed_out = result.timed_out or (result.ending is not None and result.ending.kind == "timeout")
    if timed_out:
        output = output.rstrip() + ("\n" if output.strip() else "")
        output += f"TimeoutError: the program did not finish within {timeout_s:g} seconds"
    finished = stdout.rstrip().endswith(ALL_PASSED)
    passed = result.exit_code == 0 and not timed_out and finished
    return Execution(_normalise(output), passed, timed_out, result.exit_code, result.ending)


class _Check(Protocol):
    def judged(self) -> tuple[str, str | None]: ...


class _Problem(Protocol):
    tests: Sequence[_Check]

    def test_program(self, code: str) -> str: ...


def run_tests(problem: _Problem, code: str, timeout_s: float = 5.0) -> Execution:
    """``code`` run with ``problem``'s tests: the output is the test program's (feedback a
    model reads); ``passed`` needs that run to look passed AND the tests judged outside the
    program (``judge_tests``), so printing the pass line and exiting, or patching the asserts,
    passes nothing."""
    run = run_program(problem.test_program(code), timeout_s=timeout_s)
    if not run.passed:
        return run
    passed = judge_tests(code, [t.judged() for t in problem.tests], timeout_s=timeout_s)
    return Execution(run.output, passed, run.timed_out, run.exit_code, run.ending)


def judge_tests(code: str, checks: Sequence[tuple[str, str | None]], timeout_s: float) -> bool:
    """Whether ``code`` passes ``checks``, decided here, outside the program: each check is
    (call, expected): the sandboxed harness runs the code, evaluates each call in its namespace
    and sends the value back as plain data; the expected side, a Python literal, is read here
    and never enters the sandbox (None: the call's value must be truthy, ``assert CALL``). A
    pass needs every call's value, in order, then the harness's end line. Expected sides that
    are not literals are evaluated in the program's process too (compared here all the same)."""
    from reflectioncoder.eval import sandbox
    from reflectioncoder.eval.sandbox import codec

    calls: list[list[str]] = []
    plan = []  # per check: (index of its call, what it must equal)
    for call, exp in checks:
        calls.append([call])
        at = len(calls) - 1
        if exp is None:
            plan.append((at, ("truthy", None)))
            continue
        try:
            plan.append((at, ("literal", ast.literal_eval(exp))))
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            calls.append([exp])  # evaluated in the program's process, compared here
            plan.append((at, ("computed", len(calls) - 1)))
    job = {
        "code": code,
        "exprs": True,
        "strict": sandbox.isolation().audit_guard,  # the fallback's audit guard
        "sys_path": sandbox.site_paths(),
        "phases": [{"name": "tests", "inputs": calls, "time_limits": [timeout_s] * len(calls)}],
    }
    res = sandbox.run_sandboxed(
        sandbox.harness_argv(),
        files=sandbox.harness_files(),
        stdin=json.dumps(job),
        cpu_s=timeout_s + 1.0,
        timeout_s=sandbox.wall_backstop(timeout_s + 1.0),
        memory_mb=512,
        output_limit=codec.MAX_LINE,
    )
    if res.timed_out or res.output_truncated:
        return False
    try:
        rows = [codec.read_result_row(line.encode()) for line in res.stdout.splitlines()]
    except ValueError:
        return False
    framed = len(rows) == len(calls) + 2 and rows[0].get("loaded") and rows[-1].get("done")
    body = rows[1:-1]
    if not framed or [r.get("i") for r in body] != list(range(len(calls))):
        return False
    if any("out" not in r for r in body):
        return False  # an error, or a value that is not plain data
    outs = [r["out"] for r in body]
    return all(_matches(outs[at], want, outs) for at, want in plan)


def _matches(out: Any, want: tuple[str, Any], outs: list) -> bool:
    """``out == expected`` as the assert does (on decoded plain data: no rigged ``__eq__``)."""
    from reflectioncoder.eval.sandbox.codec import Digest, Opaque

    kind, value = want
    if kind == "computed":
        value = outs[value]
    if any(isinstance(x, (Opaque, Digest)) for x in (out, value)):
        return False  # not plain data: equals nothing, and is not "truthy" either
    return bool(out) if kind == "truthy" else bool(out == value)
