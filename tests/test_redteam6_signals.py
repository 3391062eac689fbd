"""Red team, round 6: signals to every process at once. A shell sample runs ``kill -9 -1``
(the kernel's ``kill(-1, SIGKILL)``: every process the sender may signal) and ``kill -9 0``
(its process group) beside a sibling sample that sleeps, as root. Held at each level: the
box's own PID namespace, else the run's own uid (the kernel signals only processes of the
sender's uid); the sibling and the scorer live on (``kill -9 0`` ends the attacker's own
run; ``-1`` spares the sender).
"""

from __future__ import annotations

import os
import threading
import time

import pytest
import test_redteam4_ipc

from reflectioncoder.eval import sandbox

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the attacks are root's: run as root")
level = test_redteam4_ipc.level  # the fixture: bwrap, the fallback, the fallback without Landlock


def _sh(script: str) -> sandbox.ExecResult:
    return sandbox.run_sandboxed(["/bin/bash", "-c", script], timeout_s=20, cpu_s=20)


@pytest.mark.parametrize("attack", ["kill -9 -1", "kill -9 0"])
def test_signals_to_everyone_reach_only_the_run_itself(level, attack):
    victim: list = []
    sibling = threading.Thread(target=lambda: victim.append(_sh("sleep 2; echo alive")))
    sibling.start()
    time.sleep(0.7)  # the sibling asleep
    res = _sh(f"echo before; {attack}; echo after")
    sibling.join()
    assert "before" in res.stdout, (level, res)
    if attack == "kill -9 0":  # its own group: the shell itself (kill -1 spares the sender)
        assert "after" not in res.stdout and not res.ok, (level, res)
    assert victim and victim[0].ok and victim[0].stdout.strip() == "alive", (level, victim)
