"""How many CPU threads a process of ours should run: the cores it may use (its affinity mask, a
container's cpuset, and its cgroup's CPU quota: a `docker --cpus 4` or a Slurm job on a 64-core
host may use 4), less the cores other programs keep busy. The one rule of training's
``train.threads`` and evaluate's ``--threads`` defaults."""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")


def usable_cores(cgroup_root: Path = CGROUP_ROOT, proc_cgroup: Path | None = None) -> int:
    """CPU cores this process may run on: its affinity mask, capped by its cgroup's quota."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    quota = cgroup_cpu_quota(cgroup_root, proc_cgroup or Path("/proc/self/cgroup"))
    return max(1, min(cores, math.ceil(quota))) if quota is not None else cores


def default_threads(local_ranks: int = 1) -> int:
    """torch threads per rank: the usable cores shared among this machine's ranks, less the
    cores other programs keep busy. On 2 busy cores, 2 threads made a tiny-model step 19-72x
    slower than 1 (bench/RESULTS.md): threads that wait for a core spin, they do not help."""
    return thread_choice(local_ranks)[0]


def thread_choice(local_ranks: int = 1) -> tuple[int, str]:
    """``default_threads`` and why, in words for the log: it depends on the machine's load at
    start (the 1-minute load average), so two runs of one config may differ, and a float sum
    over another number of threads differs in its last bits."""
    cores = usable_cores()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    share = cores // max(1, local_ranks)
    threads = max(1, min(share, cores - round(load)))
    why = f"{cores} usable core(s)"
    if local_ranks > 1:
        why += f" shared by {local_ranks} ranks"
    if threads < share:
        why += f", {round(load)} kept busy by other programs (1-minute load average {load:.1f})"
    return threads, why


def cgroup_cpu_quota(cgroup_root: Path, proc_cgroup: Path) -> float | None:
    """The CPUs this process's cgroup (or one above it) may use, as a number of cores (1.5 for
    a 150000/100000 quota); None when no quota limits it. cgroup v2's ``cpu.max`` and v1's
    ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``; the tightest along the path wins."""
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return None
    limits = []
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":  # v2: one hierarchy
            limits += _along(cgroup_root, path, _v2_limit)
        elif "cpu" in controllers.split(","):
            for mount in (cgroup_root / controllers, cgroup_root / "cpu"):
                if mount.is_dir():
                    limits += _along(mount, path, _v1_limit)
                    break
    return min(limits) if limits else None


def _along(mount: Path, path: str, limit) -> list[float]:
    """The limits of the cgroup at ``path`` under ``mount`` and of each one above it."""
    parts = [p for p in path.strip("/").split("/") if p]
    folders = [mount.joinpath(*parts[:n]) for n in range(len(parts), -1, -1)]
    return [q for q in (limit(f) for f in folders if f.is_dir()) if q is not None]


def _v2_limit(folder: Path) -> float | None:
    try:
        quota, period = (folder / "cpu.max").read_text().split()[:2]
    except (OSError, ValueError):
        return None
    return None if quota == "max" else int(quota) / int(period)


def _v1_limit(folder: Path) -> float | None:
    try:
        quota = int((folder / "cpu.cfs_quota_us").read_text())
        period = int((folder / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return None if quota <= 0 or period <= 0 else quota / period
