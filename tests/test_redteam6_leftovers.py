"""Red team, round 6: world-writable folders outside the usual list. Without Landlock, a
fallback run (started by root, a uid of its own) may make files in any folder others may
write: its files in ``/tmp``, ``/var/tmp``, ``/dev/shm``, ... count against its ``tmp_mb``
while it runs and are removed when it ends, but PHP's ``/var/lib/php/sessions`` (1733) and any
other such folder were in neither list: a file left there stayed after the run, and a run could
fill the host's disk through it without its bound (measured: 48 MiB past a 16 MiB bound, exit
0, the files kept). Now the machine's world-writable folders are searched once per scorer
(``runuser.world_writable_folders``) and both the disk guard and the sweep walk them.
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from pathlib import Path

import pytest
import test_redteam5_disk

from reflectioncoder.eval import sandbox
from reflectioncoder.eval.sandbox import runuser

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the attacks are root's: run as root")
fallback = test_redteam5_disk.fallback  # the fixture: the fallback, with and without Landlock


@pytest.fixture
def planted(monkeypatch) -> Path:
    """A folder like PHP's sessions (root's, 1733: anyone may make a file, none may list)
    outside the usual list, found by a fresh search."""
    folder = Path(f"/var/rc-redteam6-{uuid.uuid4().hex[:8]}")
    folder.mkdir()
    folder.chmod(0o1733)
    monkeypatch.setattr(runuser, "_FOUND", [])
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def _wait_empty(folder: Path, seconds: float = 10) -> list[str]:
    deadline = time.monotonic() + seconds  # swept beside the run's own folder, off its verdict
    while os.listdir(folder) and time.monotonic() < deadline:
        time.sleep(0.05)
    return os.listdir(folder)


def test_files_left_in_any_world_writable_folder_are_removed(fallback, planted):
    attack = f"echo x > {planted}/sess_left && mkdir {planted}/d && echo x > {planted}/d/f; echo ok"
    res = sandbox.run_sandboxed(["/bin/sh", "-c", attack], timeout_s=20)
    if fallback == "rlimits":  # Landlock refuses the write itself
        assert "Permission denied" in res.stderr and os.listdir(planted) == [], res
        return
    assert res.ok and res.stdout.strip() == "ok", res  # it did write them
    assert _wait_empty(planted) == []


def test_files_in_any_world_writable_folder_count_against_tmp_mb(fallback, planted):
    attack = f"for i in 1 2 3; do head -c 16M /dev/zero > {planted}/big$i; done; echo done; sleep 1"
    res = test_redteam5_disk._run(["/bin/sh", "-c", attack])
    if fallback == "rlimits":
        assert "Permission denied" in res.stderr, res
        return
    assert res.ending is not None and res.ending.kind == "disk", res
    assert _wait_empty(planted) == []


def test_the_search_finds_writable_folders_and_does_not_enter_them(tmp_path):
    (tmp_path / "a" / "b" / "c").mkdir(parents=True)
    (tmp_path / "a").chmod(0o755)
    (tmp_path / "a" / "b").chmod(0o1777)
    (tmp_path / "a" / "b" / "c").chmod(0o777)  # walked by the sweeps, from b
    (tmp_path / "closed" / "w").mkdir(parents=True)
    (tmp_path / "closed").chmod(0o700)  # no uid but root's reaches w
    (tmp_path / "closed" / "w").chmod(0o777)
    deep = tmp_path.joinpath(*"defghijkl")  # 9 levels below the top: past the search
    deep.mkdir(parents=True)
    deep.chmod(0o777)
    assert runuser._search(str(tmp_path)) == [str(tmp_path / "a" / "b")]
    shallower = deep.parent.parent / "m"  # 8 levels: found
    deep.rename(shallower)
    assert sorted(runuser._search(str(tmp_path))) == [str(tmp_path / "a" / "b"), str(shallower)]
    assert "/var/tmp" in runuser.world_writable_folders()
