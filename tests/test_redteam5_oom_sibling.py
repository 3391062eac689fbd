"""Red team, round 5: when the scorer's own cgroup has a memory limit (a container's) below
what its runs may use together, a sample that filled its box's tmpfs (files charged to its
cgroup, but to no process's resident size) pushed the scorer's cgroup over its limit; the
kernel's OOM killer then picked, among the processes of every run (all at ``oom_score_adj``
1000), the one with the most resident memory: an honest sibling holding 300 MiB was killed
(ending ``memory``, a failed sample) and the hostile one ended with exit 0 (measured: cgroup
v1, bubblewrap, a 800 MiB scorer cgroup, two runs of 1 GiB each). Now a run holds its memory
limit from the scorer cgroup's budget while its code may run (``sandbox.admission``), and
waits while it does not fit beside the others: each run reaches its own limit first.
"""

from __future__ import annotations

import threading

import pytest
from test_redteam_oom import run_in_limited_cgroup

from reflectioncoder.eval.sandbox import admission

SCORER = r"""
from concurrent.futures import ThreadPoolExecutor
from reflectioncoder.eval import sandbox
honest = '''
import time
b = bytearray(300 << 20)
for i in range(0, len(b), 4096):
    b[i] = 1
time.sleep(3)
print("honest done")
'''
hostile = '''
import time
time.sleep(0.5)
chunk = b"x" * (1 << 20)
try:
    for d in ("/dev/shm", "/tmp"):
        for k in range(6):
            with open(f"{d}/fill{k}", "wb") as f:
                for _ in range(60):
                    f.write(chunk)
except OSError:
    pass
time.sleep(3)
'''
with ThreadPoolExecutor(2) as pool:
    runs = [pool.submit(sandbox.run_python, s, timeout_s=30, memory_mb=1024)
            for s in (honest, hostile)]
    print("honest:", runs[0].result().ending.kind, "hostile:", runs[1].result().ending.kind)
"""


@pytest.mark.slow
@pytest.mark.parametrize("level", ["bwrap", "rlimits"])
def test_a_sample_filling_its_tmpfs_does_not_get_a_sibling_killed(level):
    ran = run_in_limited_cgroup(SCORER, 800 << 20, level, "rc-redteam5")
    assert ran.returncode == 0, ran.stderr[-2000:]
    assert "honest: exit" in ran.stdout, ran.stdout


def test_runs_wait_only_while_their_limits_do_not_fit():
    """The budget: a run alone is always let in; a second waits until the first gives back;
    without a limit nothing is held."""
    assert admission.Admission(None).take(1 << 40) == 0
    budget = admission.Admission(admission.MARGIN + admission._own_resident() + (300 << 20))
    assert budget.take(1 << 40) == 1 << 40  # alone: in, whatever it asks
    second: list = []
    waiter = threading.Thread(target=lambda: second.append(budget.take(200 << 20)))
    waiter.start()
    waiter.join(0.3)
    assert second == [], "let in beside a run that holds more than the budget"
    budget.give(1 << 40)
    waiter.join(5)
    assert second == [200 << 20]
    third = budget.take(50 << 20)  # fits beside the second
    assert third == 50 << 20 and budget.held == 250 << 20
