"""Red team, round 5: a door found and NOT closed (docs/evaluation.md's threat model says so).
When the scorer's own cgroup has a memory limit (a container's) below what its runs may use
together, a sample that fills its box's tmpfs (files charged to its cgroup, but to no process's
resident size) pushes the scorer's cgroup over its limit; the kernel's OOM killer then picks,
among the processes of every run (all at ``oom_score_adj`` 1000), the one with the most
resident memory: an honest sibling holding 300 MiB is killed (ending ``memory``, a failed
sample) and the hostile one ends with exit 0. Measured here, cgroup v1, bubblewrap, a 800 MiB
scorer cgroup, two runs of 1 GiB each. A fix needs the runs' limits to fit the scorer's
together (admission), or an OOM kill that did not come from the run's own limit (its
``failcnt`` 0) treated as the scorer's, and the sample scored again: neither is built. The
test is a strict xfail: it fails the day the door is closed, to have the docs changed.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

import pytest
from test_redteam_oom import REPO, _memory_parent, _remove

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
@pytest.mark.xfail(strict=True, reason="NOT closed: an ancestor's OOM kills the biggest run")
def test_a_sample_filling_its_tmpfs_does_not_get_a_sibling_killed():
    limited = _memory_parent() / f"rc-redteam5-{uuid.uuid4().hex[:12]}"
    limited.mkdir()
    try:
        (limited / "memory.limit_in_bytes").write_text(str(800 << 20))

        def enter() -> None:
            (limited / "cgroup.procs").write_text("0")

        env = {**os.environ, "PYTHONPATH": str(REPO)}
        ran = subprocess.run(
            [sys.executable, "-c", SCORER],
            preexec_fn=enter,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        _remove(limited)
    assert ran.returncode == 0, ran.stderr[-2000:]
    assert "honest: exit" in ran.stdout, ran.stdout
