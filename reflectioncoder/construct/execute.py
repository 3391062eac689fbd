"""Run a program in the evaluation sandbox and keep what the interpreter printed.

construct/ never runs a written or mutated program itself: every run goes through
``reflectioncoder.eval.sandbox.run_python`` (the one place that runs untrusted code).
"""

from __future__ import annotations

import ast
import functools
import json
import operator
import re
from collections.abc import Callable, Sequence
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


@dataclass(frozen=True)
class Check:
    """One test, as judged outside the program: ``call`` is evaluated in the program's
    process and sent back as plain data; ``op`` (``==``, ``!=``, ``<``, ``<=``, ``>``, ``>=``,
    ``in``, ``not in``; None: the value must be truthy) compares it here with ``expected``."""

    call: str
    op: str | None = "=="
    expected: str | None = None


_OPS: dict[str, Callable[[Any, Any], Any]] = {
    "==": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
    "in": lambda a, b: operator.contains(b, a),
    "not in": lambda a, b: not operator.contains(b, a),
}


class _Checked(Protocol):
    def judged(self) -> Check: ...


class _Problem(Protocol):
    tests: Sequence[_Checked]
    solution: str

    def test_program(self, code: str) -> str: ...


def run_tests(problem: _Problem, code: str, timeout_s: float = 5.0) -> Execution:
    """``code`` run with ``problem``'s tests: the output is the test program's (feedback a
    model reads); ``passed`` needs that run to look passed AND the tests judged outside the
    program (``judge_tests``), so printing the pass line and exiting, or patching the asserts,
    passes nothing."""
    run = run_program(problem.test_program(code), timeout_s=timeout_s)
    if not run.passed:
        return run
    checks = [t.judged() for t in problem.tests]
    passed = judge_tests(code, checks, timeout_s=timeout_s, reference=problem.solution)
    return Execution(run.output, passed, run.timed_out, run.exit_code, run.ending)


def judge_tests(code: str, checks: Sequence[Check], timeout_s: float, reference: str = "") -> bool:
    """Whether ``code`` passes ``checks``, decided here, outside the program: the sandboxed
    harness runs the code, evaluates each check's call in its namespace and sends the value
    back as plain data, compared here (``Check``). A literal expected side is read here; any
    other expression is evaluated in its own sandboxed run with the problem's ``reference``
    (or no code), so the program cannot shadow what it calls (``sorted = ...``), and in the
    program too, where it must give the same value: it may hold the program's own call
    (``assert 5 == f(2)``). An expected side that needs names the reference does not define
    (no reference given) is evaluated in the program's process alone, and compared here all
    the same. A pass needs every call's value, in order, then the harness's end line."""
    computed = [c.expected for c in checks if c.expected is not None and not is_literal(c.expected)]
    outside = _expected_values(reference, tuple(computed), timeout_s)
    exprs: list[str] = [c.call for c in checks]
    wants: list[tuple[str, Any]] = []  # per check: (kind, value | index | (value, index))
    for check in checks:
        if check.expected is None:
            wants.append(("truthy", None))
        elif is_literal(check.expected):
            wants.append(("value", ast.literal_eval(check.expected)))
        else:
            exprs.append(check.expected)
            value = outside.get(check.expected, _MISSING)
            at = len(exprs) - 1
            wants.append(("program", at) if value is _MISSING else ("both", (value, at)))
    outs = _program_values(code, exprs, timeout_s)
    if outs is None or any(isinstance(v, _Failed) for v in outs):
        return False
    return all(
        _matches(outs[i], check.op, want, outs)
        for i, (check, want) in enumerate(zip(checks, wants, strict=True))
    )


class _Failed:
    """A call that raised, or whose value is not plain data (``Opaque``, ``Digest``)."""


_MISSING = object()


def is_literal(text: str) -> bool:
    """Whether ``text`` is a Python literal (read here with ``ast.literal_eval``, never run)."""
    try:
        ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return False
    return True


@functools.lru_cache(maxsize=256)
def _expected_values(reference: str, exprs: tuple[str, ...], timeout_s: float) -> dict:
    """The expected sides that are not literals, evaluated with the reference alone (no
    candidate code): expression -> value; an expression that fails there is left out."""
    if not exprs:
        return {}
    outs = _program_values(reference, list(exprs), timeout_s)
    if outs is None:
        return {}
    return {e: v for e, v in zip(exprs, outs, strict=True) if not isinstance(v, _Failed)}


def _program_values(code: str, exprs: list[str], timeout_s: float) -> list | None:
    """Each expression's value in ``code``'s namespace, from one sandboxed harness run, as
    plain data (``_Failed`` for one that raised or is not plain data); None: the run itself
    failed (timeout, truncated, unframed or reordered output)."""
    from reflectioncoder.eval import sandbox
    from reflectioncoder.eval.sandbox import codec

    job = {
        "code": code,
        "exprs": True,
        "strict": sandbox.isolation().audit_guard,  # the fallback's audit guard
        "sys_path": sandbox.site_paths(),
        "phases": [
            {
                "name": "tests",
                "inputs": [[e] for e in exprs],
                "time_limits": [timeout_s] * len(exprs),
            }
        ],
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
        return None
    try:
        rows = [codec.read_result_row(line.encode()) for line in res.stdout.splitlines()]
    except ValueError:
        return None
    framed = len(rows) == len(exprs) + 2 and rows[0].get("loaded") and rows[-1].get("done")
    body = rows[1:-1]
    if not framed or [r.get("i") for r in body] != list(range(len(exprs))):
        return None
    return [_plain(r["out"]) if "out" in r else _Failed() for r in body]


def _plain(value: Any) -> Any:
    from reflectioncoder.eval.sandbox.codec import Digest, Opaque

    return _Failed() if isinstance(value, (Opaque, Digest)) else value


def _matches(out: Any, op: str | None, want: tuple[str, Any], outs: list) -> bool:
    """The check's comparison, made here on decoded plain data (no rigged ``__eq__``)."""
    kind, value = want
    if kind == "truthy":
        return bool(out)
    if kind == "program":
        value = outs[value]
    if kind == "both":  # the reference's value, and the program's must be it
        value, at = value
        if not _OPS["=="](outs[at], value):
            return False
    try:
        return bool(_OPS[op or "=="](out, value))
    except TypeError:  # e.g. a list compared with an int by <: the assert would raise too
        return False
