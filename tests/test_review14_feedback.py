"""build-data's execution feedback for a run the sandbox stopped for printing too much.

The feedback was the last 2000 characters of what the program printed, ending in a line cut in
two (``...\\n12773\\n12``), with nothing to say the run was stopped: the reflection (a model's,
or the mutation backend's "raised `12`") explained a failure it could not see."""

from __future__ import annotations

from reflectioncoder.construct.execute import OUTPUT_CAP_NOTE, run_program, run_tests
from reflectioncoder.construct.problems import generate_problems


def test_a_flood_of_output_says_it_was_stopped(seed: int) -> None:
    run = run_program(f"for i in range({seed % 1000}, 10**6):\n    print(i)\n")
    assert not run.passed
    lines = run.output.splitlines()
    assert lines[-1] == OUTPUT_CAP_NOTE
    assert int(lines[-2]) == int(lines[-3]) + 1  # the last whole line printed, not a cut one


def test_a_correct_solution_that_prints_a_flood_fails_with_the_note(seed: int) -> None:
    problem = generate_problems(seed)[seed % 50]
    loud = f"for _ in range(10**5):\n    print('debug')\n\n{problem.solution}"
    run = run_tests(problem, loud)
    assert not run.passed and run.output.endswith(OUTPUT_CAP_NOTE)
    assert run_tests(problem, problem.solution).passed
