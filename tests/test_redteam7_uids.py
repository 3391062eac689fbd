"""Red team, round 7: two runs at once could draw the same uid. A run's uid (started by root)
was drawn at random from 2^24 with no look at the runs under way: about once in 16.7 million /
(runs at once) draws two shared one (31% over 100,000 runs 64 at a time), and with it the
kernel's per-user counts, each other's signals where nothing else parts them (the fallback
without Landlock: ``kill -9 -1``), and the first to end removed the other's IPC objects and
files in world-writable folders. Now a uid is held from its draw to its run's cleanup and
never drawn twice meanwhile. The draws are forced to collide here.
"""

from __future__ import annotations

import itertools
import os
import threading

import pytest
import test_redteam4_ipc

from reflectioncoder.eval import sandbox
from reflectioncoder.eval.sandbox import runuser

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the attacks are root's: run as root")
level = test_redteam4_ipc.level  # the fixture: bwrap, the fallback, the fallback without Landlock


def test_runs_at_once_never_share_a_uid(level, monkeypatch):
    draws = itertools.chain([7, 7, 7], itertools.count(8))  # the same draw, then others
    monkeypatch.setattr(runuser.secrets, "randbelow", lambda n: next(draws))
    first: list = []
    started = threading.Event()

    def long_run() -> None:
        argv = ["/bin/sh", "-c", "id -u; sleep 2"]
        first.append(sandbox.run_sandboxed(argv, timeout_s=20, on_stdout_line=_seen(started)))

    beside = threading.Thread(target=long_run)
    beside.start()
    try:
        assert started.wait(15), "the first run did not start"
        second = sandbox.run_sandboxed(["/bin/sh", "-c", "id -u"], timeout_s=20)
    finally:
        beside.join()
    uid = second.stdout.strip()
    assert uid and uid != str(runuser.RUN_UIDS.start + 7), (level, second)


def _seen(started: threading.Event):
    def judge(line: bytes) -> bool:
        started.set()
        return False

    return judge


def test_a_uid_is_free_again_after_its_run():
    uid = runuser.new_run_uid()
    assert uid in runuser._IN_USE
    runuser.release_run_uid(uid)
    assert uid not in runuser._IN_USE


def test_a_uid_another_scorer_holds_is_never_drawn(monkeypatch):
    """Two scorer processes on one machine (HumanEval and MBPP at once, or a job per GPU)
    each kept its own list: a uid held by the other's run could still be drawn."""
    import subprocess
    import sys

    uid = runuser.RUN_UIDS.start + 7
    other = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from reflectioncoder.eval.sandbox import runuser\n"
            f"print(runuser._claim({uid})[0], flush=True); sys.stdin.read()",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert other.stdout is not None and other.stdout.readline().strip() == "True"
        draws = itertools.chain([7, 7], itertools.count(8))
        monkeypatch.setattr(runuser.secrets, "randbelow", lambda n: next(draws))
        mine = runuser.new_run_uid()
        assert mine != uid
        runuser.release_run_uid(mine)
    finally:
        other.kill()
        other.wait()
    draws = itertools.chain([7], itertools.count(8))  # its scorer gone: the claim is stale
    monkeypatch.setattr(runuser.secrets, "randbelow", lambda n: next(draws))
    assert runuser.new_run_uid() == uid
    runuser.release_run_uid(uid)
    assert not os.path.exists(f"{runuser.CLAIMS}/{uid}")
