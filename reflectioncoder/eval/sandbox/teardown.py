"""The end of a run: killing its whole process tree at the verdict (process group, cgroup, or
a sweep for the run's marker and uid where there is no cgroup), then removing what it left
(its cgroup, its directory, the fallback's IPC objects and files of the run's own uid)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

from reflectioncoder.eval.sandbox import runuser
from reflectioncoder.eval.sandbox.cgroup import RunCgroup

__all__ = ["MARKER_ENV", "kill_all", "kill_tree", "marked_pids", "remove_run"]

# In every run's environment (``process``), with the run's own marker: the sweep finds by it
# the processes of a run that has no cgroup
MARKER_ENV = "REFLECTIONCODER_SANDBOX_RUN"


def remove_run(
    cgroup: RunCgroup | None, root: Path, uid: int | None, files: bool, run_uid: int | None
) -> None:
    """What a killed run left: its empty cgroup, its directory, and (``uid``: the fallback's
    own uid) its IPC objects and, with ``files``, what it left in world-writable folders;
    then its ``run_uid`` (either level) is free for another run."""
    try:
        if cgroup is not None:
            cgroup.remove()
        runuser.remove_tree(root)
        if uid is not None:
            runuser.remove_ipc_objects(uid)
            if files:
                runuser.remove_left_files(uid)
    finally:
        runuser.release_run_uid(run_uid)


def kill_tree(
    proc: subprocess.Popen, cgroup: RunCgroup | None, marker: str, uid: int | None
) -> None:
    """Nothing of the run survives: its process group, its cgroup, marked stragglers."""
    kill_all(proc, cgroup, marker, uid)
    with contextlib.suppress(ProcessLookupError):
        proc.kill()
    proc.wait()
    for stream in (proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()


def kill_all(
    proc: subprocess.Popen, cgroup: RunCgroup | None, marker: str, uid: int | None
) -> None:
    """SIGKILL every process of the run (its pipes stay open to be read to their end)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    if cgroup is not None:
        cgroup.kill()
    else:  # the cgroup holds every process of the run; without one, sweep for the marker
        _sweep_marked(marker, uid)


def _sweep_marked(marker: str, uid: int | None) -> None:
    """Kill processes that carry this run's marker in their environment, or run as the run's
    own uid (fallback without a cgroup: catches children that left the process group with
    setsid; the uid also those that cleared their environment)."""
    for _ in range(20):
        found = marked_pids(marker, uid)
        for pid in found:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        if not found:
            return
        time.sleep(0.01)


def marked_pids(marker: str, uid: int | None) -> list[int]:
    """The processes of a run without a cgroup, wherever they lie in the process tree: those
    running as its own ``uid`` (started by root: what it does cannot change that) and those
    carrying its marker in their environment (a process that clears it is not found)."""
    needle = f"{MARKER_ENV}={marker}".encode()
    return [
        int(entry)
        for entry in os.listdir("/proc")
        if entry.isdigit() and _is_the_runs(entry, needle, uid)
    ]


def _is_the_runs(pid: str, needle: bytes, uid: int | None) -> bool:
    try:
        if uid is not None:  # the real uid (status: readable whatever the process does)
            with open(f"/proc/{pid}/status", "rb") as f:
                for line in f:
                    if line.startswith(b"Uid:"):
                        if int(line.split()[1]) == uid:
                            return True
                        break
        with open(f"/proc/{pid}/environ", "rb") as f:
            return needle in f.read()
    except (OSError, ValueError, IndexError):
        return False
