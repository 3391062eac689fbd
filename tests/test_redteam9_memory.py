"""Red team, round 9: the machine's memory, where no cgroup limits the scorer.

Round 5 made runs hold their memory limits from the scorer cgroup's limit, so that a sample
filling its box's tmpfs (charged to its cgroup, to no process's resident size) could not push
that cgroup over and get an honest sibling picked by the OOM killer. Where no cgroup above the
scorer has a limit (this machine, most hosts) nothing was held: the runs' limits together may
pass the machine's memory (``--parallel 16`` of Go's 4 GiB on a 32 GiB host), and the
kernel's global OOM killer picks its victim by the same rule, the honest sibling with the most
resident memory. Now the machine's memory (``MemTotal``) is one more limit of the budget. (A
real global OOM is not made here: the machine is shared; the rule is.)
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from reflectioncoder.eval import sandbox
from reflectioncoder.eval.sandbox import admission


@pytest.fixture
def small_machine(monkeypatch):
    """A machine of 3 GiB (``MemTotal``), read afresh by the budget."""
    monkeypatch.setattr(admission, "_machine_memory", lambda: 3 << 30, raising=False)
    admission._made.cache_clear()
    yield
    admission._made.cache_clear()


def test_the_machines_memory_is_a_limit(small_machine):
    assert admission.scorer_memory_limit() == 3 << 30  # before: None (no cgroup limit here)
    assert admission._machine_memory is not None


def test_runs_whose_limits_pass_the_machine_do_not_run_together(small_machine):
    """Two runs of 2 GiB on a 3 GiB machine: the second starts once the first has ended."""
    program = "import time\nprint(time.time())\ntime.sleep(1)\nprint(time.time())\n"
    with ThreadPoolExecutor(2) as pool:
        runs = [
            pool.submit(sandbox.run_python, program, timeout_s=30, memory_mb=2048) for _ in range(2)
        ]
        spans = sorted(tuple(map(float, r.result().stdout.split())) for r in runs)
    assert spans[1][0] >= spans[0][1] - 0.05, spans  # before: both within the same second
    assert time.time() >= spans[1][1]


def test_runs_starting_at_once_share_one_budget(monkeypatch):
    """The first calls of several runs at once get one budget (lru_cache alone made one each:
    the test above then saw both runs of 2 GiB start together, 1 time in 4)."""

    def slow_limit():
        time.sleep(0.05)
        return 3 << 30

    monkeypatch.setattr(admission, "scorer_memory_limit", slow_limit)
    admission._made.cache_clear()
    try:
        with ThreadPoolExecutor(4) as pool:
            budgets = list(pool.map(lambda _: admission.admission(), range(4)))
    finally:
        admission._made.cache_clear()
    assert all(b is budgets[0] for b in budgets)
