"""A launcher killed with SIGKILL (``kill -9`` of its pid, an OOM killer choosing it) takes its
ranks with it: they trained on as orphans, holding the run folder's lock, so the relaunch with
``--resume`` the user typed next was refused (``pid N is training in this folder``) until they
had finished the run. Each rank now asks the kernel for SIGTERM when its parent dies
(PR_SET_PDEATHSIG), and SIGTERM ends a run with its outputs whole."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

pytest.importorskip("torch.distributed.run")

from reflectioncoder.testing.live_run import start_training_launch  # noqa: E402


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie has ended; its reaper may be slow to collect it


@pytest.mark.slow  # a real 2-rank launch, killed in its steps: about 30 s
def test_the_ranks_end_when_the_launcher_is_killed(tmp_path):
    proc, lines = start_training_launch(tmp_path, nproc=2)
    ranks = _children(proc.pid)
    assert len(ranks) == 2, "".join(lines)
    proc.kill()
    proc.wait(timeout=60)
    deadline = time.monotonic() + 90
    while any(_running(pid) for pid in ranks) and time.monotonic() < deadline:
        time.sleep(0.5)
    left = [pid for pid in ranks if _running(pid)]
    for pid in left:  # the test's own cleanup: never leave a training process behind
        os.kill(pid, signal.SIGKILL)
    assert not left, f"ranks {left} trained on after their launcher was killed"


def test_a_rank_whose_launcher_is_pid_1_trains(monkeypatch):
    """A launcher may be a container's PID 1 (`docker run IMAGE torchrun ...`): its ranks'
    parent is 1 from the start, which is no sign of a dead launcher; the rank only asks the
    kernel for SIGTERM at its parent's death, and sends itself nothing."""
    import ctypes

    from reflectioncoder import cli

    asked, sent = [], []

    class FakeLibc:
        def prctl(self, *args):
            asked.append(args)
            return 0

    monkeypatch.setattr(ctypes, "CDLL", lambda *a, **k: FakeLibc())
    monkeypatch.setattr(os, "getppid", lambda: 1)
    monkeypatch.setattr(os, "kill", lambda *args: sent.append(args))
    cli._end_with_the_launcher()
    assert asked == [(1, signal.SIGTERM, 0, 0, 0)] and sent == []
