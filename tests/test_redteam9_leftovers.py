"""Red team, round 9: a folder made world-writable after the scorer's one search (the fallback
without Landlock, started by root).

The machine's world-writable folders were searched once per scorer (round 6): a folder the host
made world-writable later (a package installed, a ``chmod``) was in no list, so a run's files
there counted against no ``tmp_mb`` (48 MiB past a 16 MiB bound, exit 0) and stayed after it
for good. Now the search runs again in the background once its list is older than a minute
(``runuser._refresh``, off every run's path): the disk guard reads the list at each look, and
each refresh removes what runs that are over left in any listed folder.
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from pathlib import Path

import pytest
import test_redteam5_disk

from reflectioncoder.eval.sandbox import runuser

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the attacks are root's: run as root")


@pytest.fixture
def late_folder(monkeypatch) -> Path:
    """A folder of root's, made world-writable (1777) after the scorer's first search; every
    later search finds it (stubbed: a real search of / takes seconds), and the list is
    searched again at each look (``_RESEARCH_S`` 0 instead of a minute)."""
    folder = Path(f"/var/rc-redteam9-{uuid.uuid4().hex[:8]}")
    folder.mkdir(mode=0o755)
    later: list[str] = []
    monkeypatch.setattr(runuser, "_FOUND", [])
    monkeypatch.setattr(runuser, "_search", lambda top: list(later))
    monkeypatch.setattr(runuser, "_REFRESH", {"at": 0.0, "running": False}, raising=False)
    monkeypatch.setattr(runuser, "_RESEARCH_S", 0.0, raising=False)
    assert str(folder) not in runuser.world_writable_folders()  # the first search
    folder.chmod(0o1777)
    later.append(str(folder))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def _wait_empty(folder: Path, seconds: float = 10) -> list[str]:
    deadline = time.monotonic() + seconds
    while os.listdir(folder) and time.monotonic() < deadline:
        runuser.world_writable_folders()  # a refresh at each look, as a run's guard asks
        time.sleep(0.05)
    return os.listdir(folder)


@pytest.mark.parametrize("fallback", ["rlimits-no-landlock"], indirect=True)
def test_a_folder_made_writable_later_counts_and_is_swept(fallback, late_folder):
    attack = (
        f"for i in 1 2 3; do head -c 16M /dev/zero > {late_folder}/big$i; done; echo done; sleep 1"
    )
    res = test_redteam5_disk._run(["/bin/sh", "-c", attack])
    # before: exit 0 with 48 MiB past its 16 MiB bound, and the files stayed
    assert res.ending is not None and res.ending.kind == "disk", res
    assert _wait_empty(late_folder) == []


fallback = test_redteam5_disk.fallback  # the fixture, parametrized above


def test_a_refresh_removes_only_what_finished_runs_left(late_folder):
    held = runuser.new_run_uid()  # a run under way
    try:
        over = runuser.RUN_UIDS.start + 11  # a run that is over: no claim, no process
        (late_folder / "d").mkdir()
        (late_folder / "d" / "f").write_text("x")
        for name, uid in (("over", over), ("held", held), ("hosts", 1000)):
            (late_folder / name).write_text(name)
            os.chown(late_folder / name, uid, uid)
        os.chown(late_folder / "d" / "f", over, over)
        os.chown(late_folder / "d", over, over)
        deadline = time.monotonic() + 10
        while os.path.lexists(late_folder / "over") and time.monotonic() < deadline:
            runuser.world_writable_folders()
            time.sleep(0.05)
        assert sorted(os.listdir(late_folder)) == ["held", "hosts"]
    finally:
        runuser.release_run_uid(held)
