"""Run a program in the evaluation sandbox and keep what the interpreter printed.

construct/ never runs a written or mutated program itself: every run goes through
``reflectioncoder.eval.sandbox.run_python`` (the one place that runs untrusted code).
"""

from __future__ import annotations

import ast
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
# The last line of the feedback of a run stopped for printing more than the sandbox keeps
OUTPUT_CAP_NOTE = "[stopped here: the program printed more output than the sandbox keeps]"
# The last line of the feedback of a failing run that printed the pass line itself (an early
# exit, a rigged comparison): the feedback never reads as passed when the tests failed
NOT_PASSED_NOTE = "[the tests did not pass: the line above was printed by the program]"
_FILE_RE = re.compile(r'File "([^"]+)"')


def checked_assertion(call: str, expected: str) -> str:
    """``assert CALL == EXPECTED`` whose failure prints the value the call returned: an
    f-string message, or ``"got " + repr(CALL)`` where the f-string does not compile (before
    Python 3.12 its expression may hold no double quote or backslash: ``f("it's")``,
    ``f('a\\n')``)."""
    line = f'assert {call} == {expected}, f"got {{{call}!r}}"'
    try:
        compile(line, "<test>", "exec")
    except SyntaxError:
        return f'assert {call} == {expected}, "got " + repr({call})'
    return line


_COMPARE: dict[type, Callable[[Any, Any], bool]] = {
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
    ast.In: lambda a, b: a in b,
    ast.NotIn: lambda a, b: a not in b,
    ast.Is: operator.is_,
    ast.IsNot: operator.is_not,
}
_CUT = re.compile(r"\b__rc_cut_(\d+)\b")


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


def _last_line(output: str, line: str) -> str:
    """``output`` ended by ``line`` (how the run ended, which the program could not print)."""
    return output.rstrip() + ("\n" if output.strip() else "") + line


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
        output = _last_line(
            output, f"TimeoutError: the program did not finish within {timeout_s:g} seconds"
        )
    elif result.output_truncated:  # stopped there: its cut last line goes, a note says why
        output = _last_line(output[: output.rfind("\n") + 1], OUTPUT_CAP_NOTE)
    finished = stdout.rstrip().endswith(ALL_PASSED)
    passed = result.exit_code == 0 and not timed_out and finished
    return Execution(_normalise(output), passed, timed_out, result.exit_code, result.ending)


@dataclass(frozen=True)
class Check:
    """One test, ``assert expr``, judged outside the program (``judge_tests``)."""

    expr: str


class _Checked(Protocol):
    def judged(self) -> Check: ...


class _Problem(Protocol):
    tests: Sequence[_Checked]
    solution: str
    entry_point: str

    def test_program(self, code: str) -> str: ...


def run_tests(problem: _Problem, code: str, timeout_s: float = 5.0) -> Execution:
    """``code`` run with ``problem``'s tests: the output is the test program's (feedback a
    model reads); ``passed`` needs that run to look passed AND the tests judged outside the
    program (``judge_tests``), so printing the pass line and exiting, or patching the asserts,
    passes nothing."""
    run = run_program(problem.test_program(code), timeout_s=timeout_s)
    passed = False
    if run.passed:
        checks = [t.judged() for t in problem.tests]
        entry = (problem.entry_point,) if problem.entry_point.isidentifier() else ()
        passed = judge_tests(code, checks, timeout_s, reference=problem.solution, program=entry)
    output = run.output
    if not passed and output.rstrip().endswith(ALL_PASSED):
        output = _last_line(output, NOT_PASSED_NOTE)
    return Execution(output, passed, run.timed_out, run.exit_code, run.ending)


def judge_tests(
    code: str,
    checks: Sequence[Check],
    timeout_s: float,
    reference: str = "",
    program: Sequence[str] = (),
) -> bool:
    """Whether ``code`` passes ``checks``, decided outside the program. ``program``: the names
    a test takes from the program (the entry point; default: the functions and classes the
    reference defines, or with no reference the program's). Each assert is split
    (``split_check``): the uses of those names (``f(2)``) run in a sandboxed
    harness with ``code`` and come back as plain data; the rest of the assert (comparisons,
    builtins, arithmetic, the reference's helpers: ``abs(f(2) - 1) < 1e-9``) runs in a second
    sandboxed run with the problem's ``reference`` (or no code) and those values, and must be
    true. So a rigged ``__eq__`` or ``__lt__``, a shadowed ``sorted`` or ``abs``, or a pass
    line printed before an early exit gains nothing. An assert whose program call uses a
    comprehension's or lambda's variable cannot be split: it runs in the program's process
    (its value must be plain data and true): the one part a program can still steer."""
    names = tuple(program) or _defined(reference) or _defined(code)
    inside: list[str] = []  # expressions run with the candidate's code
    outside: list[str] = []  # each assert's remainder, its program values as __rc_v[i]
    for check in checks:
        split = split_check(check.expr, names)
        if split is None:
            outside.append(f"__rc_v[{len(inside)}]")
            inside.append(check.expr)
            continue
        rest, calls = split
        base = len(inside)
        outside.append(_CUT.sub(lambda m, b=base: f"__rc_v[{b + int(m.group(1))}]", rest))
        inside.extend(calls)
    values = _program_values(code, inside, timeout_s) if inside else []
    if values is None or any(isinstance(v, _Failed) for v in values):
        return False
    verdicts = [_host_verdict(expr, values) for expr in outside]
    if False in verdicts:  # decided here: no second run
        return False
    rest = [expr for expr, verdict in zip(outside, verdicts, strict=True) if verdict is None]
    if not rest:  # plain values against literals: nothing left to run
        return True
    try:
        bound = f"{reference.rstrip()}\n\n__rc_v = {_source(values)}\n"
    except TypeError:
        return False
    ran = _program_values(bound, rest, timeout_s)
    return ran is not None and all(not isinstance(v, _Failed) and v for v in ran)


def _host_verdict(expr: str, values: list) -> bool | None:
    """``expr``'s truth when it only compares program values with literals (``__rc_v[0] ==
    [1, 2]``, chained, with and / or / not): decided here on plain data, no code runs. None:
    anything else (a call, arithmetic, a name), which runs in the sandbox instead."""

    def operand(node: ast.expr) -> Any:
        if (
            isinstance(node, ast.Subscript)
            and isinstance(node.value, ast.Name)
            and node.value.id == "__rc_v"
            and isinstance(node.slice, ast.Constant)
        ):
            return values[node.slice.value]
        return ast.literal_eval(node)  # ValueError: not a literal

    def truth(node: ast.expr) -> bool:
        if isinstance(node, ast.BoolOp):
            parts = map(truth, node.values)
            return all(parts) if isinstance(node.op, ast.And) else any(parts)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            return not truth(node.operand)
        if isinstance(node, ast.Compare):
            left = operand(node.left)
            for op, right_node in zip(node.ops, node.comparators, strict=True):
                right = operand(right_node)
                if not _COMPARE[type(op)](left, right):
                    return False
                left = right
            return True
        return bool(operand(node))

    try:
        return truth(ast.parse(expr, mode="eval").body)
    except TypeError:  # e.g. a list < an int: the assert would raise too
        return False
    except (ValueError, KeyError, SyntaxError, RecursionError, MemoryError):
        return None


def split_check(expr: str, program: Sequence[str]) -> tuple[str, list[str]] | None:
    """``expr`` with each use of a ``program`` name (a call ``f(x)``, ``obj.m(x)``, or the bare
    name) cut out: (the rest, with ``__rc_cut_0``, ``__rc_cut_1``, ... where the cuts were; the
    cut expressions). None: a cut would use a variable bound inside ``expr`` (a comprehension, a
    lambda), or ``expr`` is not one expression."""
    try:
        tree = ast.parse(expr.strip(), mode="eval")
    except SyntaxError:
        return None
    cuts: list[str] = []
    names = set(program)

    class Cut(ast.NodeTransformer):
        def __init__(self) -> None:
            self.bound: list[set[str]] = []

        def _scoped(self, node: ast.AST) -> ast.AST:
            self.bound.append(
                {
                    n.id
                    for n in ast.walk(node)
                    if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)
                }
                | {a.arg for a in ast.walk(node) if isinstance(a, ast.arg)}
            )
            node = self.generic_visit(node)
            self.bound.pop()
            return node

        visit_ListComp = visit_SetComp = visit_DictComp = visit_GeneratorExp = _scoped
        visit_Lambda = _scoped

        def visit(self, node: ast.AST) -> ast.AST:
            if isinstance(node, ast.NamedExpr):
                raise ValueError("an assignment inside the assert")
            root = _root_name(node)
            if root is not None and root in names:
                used = {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}
                if any(used & scope for scope in self.bound):
                    raise ValueError("a program call on a bound variable")
                cuts.append(ast.unparse(node))
                return ast.Name(id=f"__rc_cut_{len(cuts) - 1}", ctx=ast.Load())
            return super().visit(node)

    try:
        return ast.unparse(Cut().visit(tree)), cuts
    except ValueError:
        return None


def _defined(code: str) -> tuple[str, ...]:
    """The functions and classes ``code`` defines at its top level (none if it does not parse)."""
    try:
        body = ast.parse(code).body
    except (SyntaxError, ValueError):
        return ()
    kinds = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
    return tuple(node.name for node in body if isinstance(node, kinds))


def _root_name(node: ast.AST) -> str | None:
    """The name a use of the program starts from: ``f`` in ``f(x)``, ``f``, ``f.g(x)[0]``."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Call):
        return _root_name(node.func)
    if isinstance(node, (ast.Attribute, ast.Subscript)):
        return _root_name(node.value)
    return None


def _source(value: Any) -> str:
    """Python source that rebuilds a decoded plain value exactly (floats through hex)."""
    if value is None or isinstance(value, (bool, int, str, bytes)):
        return repr(value)
    if isinstance(value, float):
        return f"float.fromhex({value.hex()!r})"
    if isinstance(value, complex):
        return f"complex({_source(value.real)}, {_source(value.imag)})"
    if isinstance(value, bytearray):
        return f"bytearray({bytes(value)!r})"
    if isinstance(value, list):
        return "[" + ", ".join(map(_source, value)) + "]"
    if isinstance(value, tuple):
        return "(" + "".join(_source(v) + ", " for v in value) + ")"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_source(k)}: {_source(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (set, frozenset)):
        return f"{type(value).__name__}([" + ", ".join(map(_source, value)) + "])"
    raise TypeError(f"not plain data: {type(value).__name__}")


class _Failed:
    """A call that raised, or whose value is not plain data (``Opaque``, ``Digest``)."""


def _program_values(code: str, exprs: list[str], timeout_s: float) -> list | None:
    """Each expression's value in ``code``'s namespace, from one sandboxed harness run, as
    plain data (``_Failed`` for one that raised or is not plain data); None: the run itself
    failed (timeout, truncated, unframed or reordered output)."""
    from reflectioncoder.eval import sandbox
    from reflectioncoder.eval.sandbox import result_decode

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
        output_limit=result_decode.MAX_LINE,
    )
    if res.timed_out or res.output_truncated:
        return None
    try:
        rows = [result_decode.read_result_row(line.encode()) for line in res.stdout.splitlines()]
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
