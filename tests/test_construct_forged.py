"""build-data never records a forged pass: a program that prints the pass line and exits,
exits early, rigs ``__eq__`` or patches how a failed assert ends is judged outside (the test
calls' values, compared here with the expected literals that never enter the sandbox), so it
fails; the honest solution of the same problem passes (these tests can fail)."""

from __future__ import annotations

import random

import pytest

from reflectioncoder.construct.backend import Draft
from reflectioncoder.construct.build import reflection_sample
from reflectioncoder.construct.execute import (
    ALL_PASSED,
    Check,
    judge_tests,
    run_program,
    run_tests,
    split_check,
)
from reflectioncoder.construct.from_problems import AssertTest, UserProblem
from reflectioncoder.construct.problems import generate_problems


def _problem(seed: int):
    return random.Random(seed).choice(generate_problems(seed % 1000))


def _wrong(problem) -> str:
    return f"def {problem.entry_point}(*args, **kwargs):\n    return 'wrong'\n"


FORGERIES = {
    "print the pass line, _exit(0)": (
        "import os, sys\nprint({passed!r})\nsys.stdout.flush()\nos._exit(0)\n{wrong}"
    ),
    "excepthook prints it": (
        "import os, sys\n"
        "def _hook(*a):\n    print({passed!r})\n    sys.stdout.flush()\n    os._exit(0)\n"
        "sys.excepthook = _hook\n{wrong}"
    ),
    "atexit prints it": (
        "import atexit, os, sys\n"
        "def _end():\n    print({passed!r})\n    sys.stdout.flush()\n    os._exit(0)\n"
        "atexit.register(_end)\n{wrong}"
    ),
    "rigged __eq__": (
        "class _Yes:\n    def __eq__(self, other):\n        return True\n"
        "    def __repr__(self):\n        return 'yes'\n"
        "def {name}(*args, **kwargs):\n    return _Yes()\n"
    ),
    "int subclass equal to all": (
        "class _Yes(int):\n    def __eq__(self, other):\n        return True\n"
        "    __hash__ = int.__hash__\n"
        "def {name}(*args, **kwargs):\n    return _Yes(-12345)\n"
    ),
}


def _forgery(kind: str, problem) -> str:
    return FORGERIES[kind].format(
        passed=ALL_PASSED, wrong=_wrong(problem), name=problem.entry_point
    )


@pytest.mark.parametrize("kind", list(FORGERIES))
def test_forged_pass_is_not_a_pass(kind, seed):
    problem = _problem(seed)
    code = _forgery(kind, problem)
    looked = run_program(problem.test_program(code))
    assert looked.passed, (kind, looked.output)  # each one fooled the printed-line rule
    run = run_tests(problem, code)
    assert not run.passed, (kind, run.output)


def test_honest_solution_passes(seed):
    problem = _problem(seed)
    assert run_tests(problem, problem.solution).passed


def test_user_problem_asserts_are_judged_outside():
    """The user's own assert lines: equalities, a bare truthy assert, a message, and an
    expected side that is not a literal (computed in the program, compared outside)."""
    tests = (
        AssertTest("assert add(2, 3) == 5"),
        AssertTest("assert add(-1, 1) == 0, 'zero'"),
        AssertTest("assert add(1, 1) > 1"),
        AssertTest("assert add(2, 2) == sum([2, 2])"),
    )
    problem = UserProblem("u/1", "Add two numbers.", tests, entry_point="add")
    assert run_tests(problem, "def add(a, b):\n    return a + b\n").passed
    assert not run_tests(problem, "def add(a, b):\n    return a - b\n").passed
    forged = "import os\nprint('All tests passed.')\nos._exit(0)\ndef add(a, b):\n    return 0\n"
    assert not run_tests(problem, forged).passed
    checks = [t.judged() for t in tests]
    assert checks[2] == Check("add(1, 1) > 1") and checks[1] == Check("add(-1, 1) == 0")
    assert not judge_tests("def add(a, b):\n    return 0\n", checks[2:3], timeout_s=5)


RIGGED_GT = (
    "class _Big:\n    def __gt__(self, other):\n        return True\n"
    "    __ge__ = __gt__\n"
    "def add(a, b):\n    return _Big()\n"
)
SHADOWED_SUM = "def add(a, b):\n    return -1\nsum = lambda xs: -1\n"


def test_comparisons_are_made_outside_the_program():
    """``assert add(1, 1) > 1`` and its kin: the call's plain value is compared here, so an
    object whose ``__gt__`` always says True is not a pass; a wrong plain value is not either."""
    tests = (AssertTest("assert add(1, 1) > 1"), AssertTest("assert add(2, 2) >= 4"))
    problem = UserProblem("u/2", "Add two numbers.", tests, entry_point="add")
    assert run_program(problem.test_program(RIGGED_GT)).passed  # the printed rule is fooled
    assert not run_tests(problem, RIGGED_GT).passed
    assert not run_tests(problem, "def add(a, b):\n    return 1\n").passed
    assert run_tests(problem, "def add(a, b):\n    return a + b\n").passed
    for op, want in (("in", "[1, 2]"), ("not in", "[7]"), ("!=", "7"), ("<", "3"), ("<=", "2")):
        check = AssertTest(f"assert add(1, 1) {op} {want}").judged()
        assert judge_tests("def add(a, b):\n    return a + b\n", [check], timeout_s=5), op
        assert not judge_tests("def add(a, b):\n    return 7\n", [check], timeout_s=5), op


def test_computed_expected_side_runs_with_the_reference_not_the_program():
    """An expected side that is not a literal (``sum([2, 2])``) is evaluated without the
    program (with the reference when there is one), so shadowing ``sum`` forges nothing."""
    tests = (
        AssertTest("assert add(2, 2) == sum([2, 2])"),
        AssertTest("assert add(1, 5) == sum([1, 5])"),
    )
    reference = "def add(a, b):\n    return a + b\n"
    problem = UserProblem("u/3", "Add two numbers.", tests, reference, entry_point="add")
    assert run_program(problem.test_program(SHADOWED_SUM)).passed  # the printed rule is fooled
    assert not run_tests(problem, SHADOWED_SUM).passed
    assert run_tests(problem, reference).passed
    # no reference: builtins alone still give the expected side, outside the program
    bare = UserProblem("u/4", "Add two numbers.", tests, entry_point="add")
    assert not run_tests(bare, SHADOWED_SUM).passed
    # an expected side naming the reference's own helper is evaluated with the reference
    helper = (AssertTest("assert add(2, 3) == _add_ref(2, 3)"),)
    with_helper = reference + "def _add_ref(a, b):\n    return a + b\n"
    problem = UserProblem("u/5", "Add two numbers.", helper, with_helper, entry_point="add")
    forged = "def add(a, b):\n    return 0\ndef _add_ref(a, b):\n    return 0\n"
    assert run_program(problem.test_program(forged)).passed
    assert not run_tests(problem, forged).passed
    assert run_tests(problem, reference + "def _add_ref(a, b):\n    return a + b\n").passed


ANY = (
    "class _Any:\n    def __eq__(self, other):\n        return True\n"
    "    __lt__ = __gt__ = __eq__\n"
    "def add(a, b):\n    return _Any()\n"
)


def test_the_call_on_the_expected_side_is_judged_in_the_program_too():
    """``assert 5 == add(2, 3)``: the program's call is on the expected side. Evaluated with the
    reference alone it is the reference's 5 whatever the program returns, and an object whose
    ``__eq__`` says True passes the program's own asserts: it must not pass here."""
    reference = "def add(a, b):\n    return a + b\n"
    for line in ("assert 5 == add(2, 3)", "assert 1 < add(1, 1)", "assert 2 in [add(1, 1)]"):
        tests = (AssertTest(line),)
        problem = UserProblem("u/6", "Add two numbers.", tests, reference, entry_point="add")
        assert run_program(problem.test_program(ANY)).passed, line  # the printed rule is fooled
        assert not run_tests(problem, ANY).passed, line
        assert run_tests(problem, reference).passed, line
    # the program's value is what is compared: 1 < 3 holds though the reference says 2
    assert AssertTest("assert 1 < add(1, 1)").judged() == Check("1 < add(1, 1)")
    assert judge_tests("def add(a, b):\n    return 3\n", [Check("1 < add(1, 1)")], 5)


def test_split_check_cuts_out_the_programs_calls():
    assert split_check("abs(add(1, 2) - 3) < 1e-9", ["add"]) == (
        "abs(__rc_cut_0 - 3) < 1e-09",
        ["add(1, 2)"],
    )
    assert split_check("0 < add(1, 1) < add(2, 2) and {1: 2}", ["add"]) == (
        "0 < __rc_cut_0 < __rc_cut_1 and {1: 2}",
        ["add(1, 1)", "add(2, 2)"],
    )
    assert split_check("Sol().add(1, 1)[0] == sorted([2])", ["Sol"]) == (
        "__rc_cut_0 == sorted([2])",
        ["Sol().add(1, 1)[0]"],
    )
    # a call on a comprehension's variable cannot be cut out: judged in the program
    assert split_check("all(add(x, x) == 2 * x for x in range(3))", ["add"]) is None
    assert split_check("all(add(1, 1) == x for x in [2])", ["add"])[1] == ["add(1, 1)"]


RIGGED_SUB = (
    "class _Zero:\n    def __sub__(self, other):\n        return 0\n"
    "def add(a, b):\n    return _Zero()\n"
)
SHADOWED_ABS = "def add(a, b):\n    return 99\nabs = lambda v: 0\n"


RIGGED_YES = (
    "class _Yes:\n    __eq__ = __lt__ = __gt__ = lambda self, other: True\n"
    "class _Num:\n    def __sub__(self, other):\n        return _Yes()\n"
    "def add(a, b):\n    return _Num()\n"
)


@pytest.mark.parametrize(
    "line,forged",
    [
        ("assert abs(add(1, 2) - 3) < 1e-9", RIGGED_SUB),
        ("assert abs(add(1, 2) - 3) < 1e-9", SHADOWED_ABS),
        ("assert 0 < add(1, 1) - 1 < 2 and add(2, 2) - 4 == 0", RIGGED_YES),
        ("assert not add(2, 2) - 4", RIGGED_SUB),
    ],
)
def test_compound_asserts_are_judged_outside(line, forged):
    """Arithmetic, builtins, chained comparisons, ``and`` and ``not`` around the program's
    calls run outside it: a rigged ``__sub__`` or ``__lt__``, or a shadowed ``abs``, each of
    which fools the program's own assert, forges nothing."""
    reference = "def add(a, b):\n    return a + b\n"
    problem = UserProblem("u/7", "Add two numbers.", (AssertTest(line),), reference, "add")
    assert run_tests(problem, reference).passed
    assert run_program(problem.test_program(forged)).passed  # the printed rule is fooled
    assert not run_tests(problem, forged).passed
    bare = UserProblem("u/8", "Add two numbers.", (AssertTest(line),), entry_point="add")
    assert not run_tests(bare, forged).passed
    assert not run_tests(bare, "def add(a, b):\n    return a - b\n").passed
    assert run_tests(bare, reference).passed


class _ForgingBackend:
    """A chat model that answers every turn with a forged pass (build-data's openai backend
    with a hostile server)."""

    name = "forger"

    def __init__(self, code: str) -> None:
        self.code = code

    def attempt(self, problem, rng):
        return Draft("Here it is.", self.code)

    def reflect(self, problem, history, rng):
        return Draft("Fixed.", self.code)


def test_build_data_records_no_forged_sample(seed):
    problem = _problem(seed)
    backend = _ForgingBackend(_forgery("print the pass line, _exit(0)", problem))
    sample = reflection_sample(
        problem, backend, random.Random(seed), max_rounds=1, max_attempts=1,
        redraw_passing=False,
    )  # fmt: skip
    assert sample is None


def test_an_assert_that_cannot_be_split_is_judged_in_the_program():
    """``all(add(x, x) == 2 * x for x in ...)``: the call uses the comprehension's variable, so
    the whole assert runs in the program; its value must still be plain data and true."""
    line = "assert all(add(x, x) == 2 * x for x in range(3))"
    problem = UserProblem("u/9", "Double.", (AssertTest(line),), entry_point="add")
    assert run_tests(problem, "def add(a, b):\n    return a + b\n").passed
    assert not run_tests(problem, "def add(a, b):\n    return a * b\n").passed


def test_plain_comparisons_are_decided_without_a_second_run():
    """``f(x) == literal`` (chained, and / or / not) is decided on the plain values here; a
    call, arithmetic or a name is left to the sandboxed run (None)."""
    from reflectioncoder.construct.execute import _host_verdict

    values = [3, [1, 2], None]
    assert _host_verdict("__rc_v[0] == 3 and __rc_v[1] != [2, 1]", values) is True
    assert _host_verdict("0 < __rc_v[0] < 3", values) is False
    assert _host_verdict("not __rc_v[2] is None or 2 in __rc_v[1]", values) is True
    assert _host_verdict("__rc_v[1] < 3", values) is False  # TypeError: the assert raises
    assert _host_verdict("__rc_v[0]", values) is True
    for expr in ("abs(__rc_v[0]) == 3", "__rc_v[0] - 3 == 0", "__rc_v[0] == x"):
        assert _host_verdict(expr, values) is None, expr
