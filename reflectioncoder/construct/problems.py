"""Small programming problems generated from templates, with reference solutions and tests.

Each template family (``families_numbers.py``, ``families_sequences.py``; the record:
``templates.py``) is parameterised (a predicate, a constant, a character, ...) so the
families together give a few hundred distinct problems. A problem's tests are computed by
running its reference solution, which is our own trusted code, in this process on seeded
random inputs; every model-written or mutated program runs in the sandbox instead.
"""

from __future__ import annotations

import ast
import random
import textwrap
from dataclasses import dataclass

from reflectioncoder.construct.execute import ALL_PASSED, Check, checked_assertion
from reflectioncoder.construct.families_numbers import number_templates, predicate_templates
from reflectioncoder.construct.families_sequences import list_templates, string_templates
from reflectioncoder.construct.templates import Template

# How a HumanEval-style instruction starts (SPEC §5 uses the same words at evaluation).
HUMANEVAL_PREAMBLE = "Write a complete Python function for the problem."
N_TESTS = 3


@dataclass(frozen=True)
class TestCase:
    """One test: ``call`` (a Python expression) must evaluate to the value ``expected`` reprs."""

    call: str
    expected: str

    def assertion(self) -> str:
        """A plain assertion, as MBPP writes its tests."""
        return f"assert {self.call} == {self.expected}"

    def checked_assertion(self) -> str:
        """An assertion whose failure prints the value the call returned."""
        return checked_assertion(self.call, self.expected)

    def judged(self) -> Check:
        """For ``execute.judge_tests``: the call's value must equal this."""
        return Check(f"{self.call} == {self.expected}")


@dataclass(frozen=True)
class Problem:
    """A small function-writing problem with a reference solution and tests.

    ``prompt`` is the HumanEval-style signature and docstring; ``solution`` the reference
    function without its docstring (normalised through ``ast.unparse`` so that mutated and fixed
    code print the same way); ``tests`` at least one, computed from the solution.
    """

    task_id: str
    family: str
    entry_point: str
    description: str
    prompt: str
    solution: str
    tests: tuple[TestCase, ...]

    def instruction(self, style: str = "humaneval") -> str:
        """The user's instruction, in one of SPEC §5's two prompt styles."""
        if style == "humaneval":
            return f"{HUMANEVAL_PREAMBLE}\n\n{self.prompt.strip()}"
        if style == "mbpp":
            return (
                f"{self.description}\nYour code should satisfy the following assertion:\n"
                f"```python\n{self.tests[0].assertion()}\n```"
            )
        raise ValueError(f"style: expected 'humaneval' or 'mbpp', got {style!r}")

    def test_program(self, code: str) -> str:
        """``code`` followed by this problem's tests, printing a line when all pass."""
        checks = "\n".join(t.checked_assertion() for t in self.tests)
        return f"{code.rstrip()}\n\n\n{checks}\nprint({ALL_PASSED!r})\n"


_FAMILIES = (predicate_templates, number_templates, string_templates, list_templates)


def _render(template: Template, index: int, rng: random.Random) -> Problem:
    name = template.name
    header = f"def {name}{template.signature}:"
    body = textwrap.indent(textwrap.dedent(template.body).strip("\n"), "    ")
    solution = ast.unparse(ast.parse(f"{header}\n{body}\n"))
    namespace: dict = {}
    exec(compile(solution, f"<{name}>", "exec"), namespace)  # our own reference code
    fn = namespace[name]
    candidates: dict[str, TestCase] = {}
    for _ in range(40):  # random inputs, distinct calls
        args = template.inputs(rng)
        call = f"{name}({', '.join(repr(a) for a in args)})"
        candidates.setdefault(call, TestCase(call, repr(fn(*args))))
    # Tests with distinct expected values first: they tell more wrong programs apart.
    tests: list[TestCase] = []
    for test in candidates.values():
        if len(tests) < N_TESTS and test.expected not in {t.expected for t in tests}:
            tests.append(test)
    for test in candidates.values():
        if len(tests) < N_TESTS and test not in tests:
            tests.append(test)
    # The docstring's example (and MBPP's one assertion) is the first test: make it telling.
    trivial = ("[]", "0", "False", "None", "''", "-1")
    telling = [t for t in tests if t.expected not in trivial]
    if telling:
        tests.remove(telling[0])
        tests.insert(0, telling[0])
    example = f"    >>> {tests[0].call}\n    {tests[0].expected}\n"
    prompt = f'{header}\n    """{template.doc}\n{example}    """\n'
    return Problem(
        task_id=f"construct/{index}",
        family=template.family,
        entry_point=name,
        description=f"Write a function {name}{template.signature.split(' ->')[0]}. " + template.doc,
        prompt=prompt,
        solution=solution,
        tests=tuple(tests),
    )


def all_templates() -> list[Template]:
    """Every template, in a fixed order (names are unique)."""
    return [t for family in _FAMILIES for t in family()]


def generate_problems(seed: int, n: int | None = None) -> list[Problem]:
    """The distinct template problems in a seeded order, with seeded test inputs.

    n: how many (default all; ValueError if more than the templates give).
    """
    templates = all_templates()
    if n is not None and not 0 <= n <= len(templates):
        raise ValueError(f"n: expected 0..{len(templates)} distinct problems, got {n}")
    rng = random.Random(seed)
    order = list(range(len(templates)))
    rng.shuffle(order)
    order = order if n is None else order[:n]
    return [_render(templates[i], i, random.Random(f"{seed}/{i}")) for i in order]
