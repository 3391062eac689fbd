"""Red team, round 3: build-data's execution feedback (what a model reads, and what goes into
the training data) for a program that prints the harness's pass line itself.

The verdict was already judged outside the program (``test_construct_forged.py``), but the
feedback of such a failing run ended with "All tests passed.": a training sample then showed
a model a passing run followed by a fix. Now a failing run's feedback never ends with the pass
line: the harness adds a last line the program cannot take back. A program that is
stopped by the sandbox (flood, stdin it never gets, descriptors used up, a child that holds
the pipe) ends its own run only, quickly."""

from __future__ import annotations

import random
import time

import pytest

from reflectioncoder.construct.execute import (
    ALL_PASSED,
    NOT_PASSED_NOTE,
    OUTPUT_CAP_NOTE,
    run_program,
    run_tests,
)
from reflectioncoder.construct.problems import generate_problems

FORGED = {
    "prints the pass line, exits 1": "print({passed!r})\nraise SystemExit(1)\n{wrong}",
    "prints it, exits 0": "import os\nprint({passed!r}, flush=True)\nos._exit(0)\n{wrong}",
    "rigged __eq__": (
        "class _Yes:\n    def __eq__(self, other):\n        return True\n"
        "def {name}(*args, **kwargs):\n    return _Yes()\n"
    ),
}


def _problem(seed: int):
    return random.Random(seed).choice(generate_problems(seed % 1000))


@pytest.mark.parametrize("kind", list(FORGED))
def test_a_failing_run_never_reads_as_passed(kind, seed):
    problem = _problem(seed)
    wrong = f"def {problem.entry_point}(*args, **kwargs):\n    return 'wrong'\n"
    code = FORGED[kind].format(passed=ALL_PASSED, wrong=wrong, name=problem.entry_point)
    run = run_tests(problem, code)
    assert not run.passed
    assert run.output.splitlines()[-1] == NOT_PASSED_NOTE, run.output
    assert ALL_PASSED in run.output  # what it printed is kept, the note follows it
    honest = run_tests(problem, problem.solution)
    assert honest.passed and honest.output.splitlines()[-1] == ALL_PASSED


HOSTILE = {
    "a flood without a newline": (
        "import sys\nwhile True:\n    sys.stdout.write('x' * 65536)\n",
        lambda r: r.output.endswith(OUTPUT_CAP_NOTE),
    ),
    "reads stdin it never gets": (
        "import sys\nprint(len(sys.stdin.read()))\n",
        lambda r: r.output == "0" and r.exit_code == 0,
    ),
    "uses up its descriptors": (
        "import os\nn = 0\ntry:\n    while True:\n        os.open('/dev/null', 0); n += 1\n"
        "except OSError:\n    print('stopped')\n",
        lambda r: r.output == "stopped" and r.exit_code == 0,
    ),
    "a child holds the pipe open": (
        "import os, time\nif os.fork() == 0:\n    time.sleep(60)\nprint('parent')\n",
        lambda r: r.output == "parent" and r.exit_code == 0,
    ),
}


@pytest.mark.parametrize("kind", list(HOSTILE))
def test_a_hostile_program_ends_its_own_run(kind):
    source, expected = HOSTILE[kind]
    t0 = time.monotonic()
    run = run_program(source, timeout_s=2.0)
    assert expected(run), (kind, run)
    assert time.monotonic() - t0 < 20, kind  # none waits for its child or a wall backstop
