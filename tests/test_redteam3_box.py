"""Red team, round 3: what a box's environment and a fallback run leave behind.

- The box's environment held the host's PATH (a home's ``bin``, pyenv's shims, a venv): now a
  fixed PATH of the system's directories, plus the bound toolchain directories that the host
  PATH named, at either level.
- The fallback without Landlock, started by root: a program (shell here) could leave files
  and folders in ``/tmp``, ``/var/tmp`` and ``/dev/shm`` (world-writable), which outlived
  its run; now what the run's own uid left there is removed when the run ends.
"""

from __future__ import annotations

import dataclasses
import os
import time
import uuid
from pathlib import Path

import pytest

from reflectioncoder.eval import sandbox
from reflectioncoder.eval.sandbox import bwrap, process, runuser

_FIXED_ENV = {"LANG", "OMP_NUM_THREADS", "PYTHONHASHSEED", "PYTHONDONTWRITEBYTECODE", "TMPDIR"}


@pytest.fixture
def planted_path(tmp_path, monkeypatch) -> str:
    """A host PATH whose first directory is one only the host has (a user's ``~/bin``)."""
    mine = tmp_path / "host-only-bin"
    mine.mkdir()
    monkeypatch.setenv("PATH", f"{mine}:{os.environ['PATH']}")
    return str(mine)


def _box_env(**run) -> dict[str, str]:
    res = sandbox.run_sandboxed(["/usr/bin/env"], timeout_s=20, **run)
    assert res.exit_code == 0, res
    return dict(line.split("=", 1) for line in res.stdout.splitlines())


@pytest.mark.parametrize("level", ["auto", "rlimits"])
def test_the_box_path_is_fixed(level, planted_path, monkeypatch):
    if level == "rlimits":
        monkeypatch.setenv("REFLECTIONCODER_SANDBOX", "rlimits")
    elif not sandbox.isolation().bwrap:
        pytest.skip("bubblewrap cannot run here")
    env = _box_env()
    assert env["PATH"] == ":".join(bwrap.SYSTEM_PATH), env["PATH"]
    assert planted_path not in "\n".join(env.values())
    extra = set(env) - _FIXED_ENV - {"PATH", "HOME", "REFLECTIONCODER_SANDBOX_RUN"}
    assert extra <= {"PWD"} and env.get("PWD", env["HOME"]) == env["HOME"], env  # bwrap's


def test_a_bound_toolchain_keeps_its_place_on_path(planted_path):
    """A toolchain found on the host PATH outside the system (``~/.cargo/bin``) and bound into
    the box stays on its PATH, ahead of the system's, as on the host."""
    assert bwrap.box_path([planted_path]).split(":") == [planted_path, *bwrap.SYSTEM_PATH]
    assert bwrap.box_path([str(Path(planted_path).parent)]).startswith(planted_path + ":")
    env = _box_env(ro_binds=[planted_path])
    assert env["PATH"].split(":")[0] == planted_path


_LEAVE = (
    "mkdir -p /tmp/{tag}-dir/sub && echo x > /tmp/{tag}-dir/sub/f && "
    "echo x > /tmp/{tag} && echo x > /var/tmp/{tag} && echo x > /dev/shm/{tag} && "
    "ln -s /etc/hostname /tmp/{tag}-link && echo {tag}"
)


@pytest.mark.skipif(os.geteuid() != 0, reason="the fallback's own uid per run is root's")
def test_the_fallback_leaves_no_files(monkeypatch):
    monkeypatch.setenv("REFLECTIONCODER_SANDBOX", "rlimits")
    # a kernel without Landlock (before 5.13, or with it off): the fallback writes anywhere
    # its uid may; here one that has it is told to leave it out
    no_landlock = dataclasses.replace(sandbox.isolation(), landlock=False)
    monkeypatch.setattr(process, "isolation", lambda: no_landlock)
    tag = f"rc-redteam3-{uuid.uuid4().hex}"
    res = sandbox.run_sandboxed(["/bin/sh", "-c", _LEAVE.format(tag=tag)], timeout_s=20)
    assert res.exit_code == 0 and res.stdout.strip() == tag, res  # it did write them
    left = [
        Path(p) for p in (f"/tmp/{tag}-dir", f"/tmp/{tag}", f"/var/tmp/{tag}", f"/dev/shm/{tag}")
    ] + [Path(f"/tmp/{tag}-link")]
    deadline = time.monotonic() + 10  # removed beside the run's own folder, off its verdict
    while any(os.path.lexists(p) for p in left) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [str(p) for p in left if os.path.lexists(p)]
    assert Path("/etc/hostname").exists()  # the link went, not what it named


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to a run's uid is root's")
def test_the_sweep_stops_at_its_depth(tmp_path):
    """A sibling's chain of world-writable folders (another uid's, 300 deep) neither crashes
    nor slows the sweep; files of the run's uid in the first levels go, the deeper ones stay
    (until the sibling's own sweep removes its chain)."""
    uid, sibling = runuser.new_run_uid(), runuser.new_run_uid()
    folder = tmp_path
    folder.chmod(0o1777)
    for level in range(300):
        mine = folder / f"left-{level}"
        mine.write_text("x")
        os.chown(mine, uid, uid)
        folder = folder / "d"
        folder.mkdir()
        os.chown(folder, sibling, sibling)
        folder.chmod(0o777)
    runuser.remove_left_files(uid, [str(tmp_path)])
    left = sorted(int(n.split("-")[1]) for _, _, names in os.walk(tmp_path) for n in names)
    # bottom-up, here: pytest's later clean-up of old temp folders recurses and fails on 300
    for root, dirs, names in os.walk(tmp_path, topdown=False):
        for name in names:
            os.unlink(os.path.join(root, name))
        for name in dirs:
            os.rmdir(os.path.join(root, name))
    assert left == list(range(4, 300))
