"""Each run's cgroup: where this machine lets us make them (probed once), and one run's
lifecycle (limits written, every process put in before exec, CPU clock read, the tree killed,
the cgroup removed).

A run's cgroup is v2 where the machine lets us make one with controllers, else the v1 ``pids``,
``memory``, ``cpu`` and ``cpuacct`` hierarchies, nested under the scorer's own cgroup.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
import uuid
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path

from reflectioncoder.eval.sandbox.landlock import DEVICES
from reflectioncoder.eval.sandbox.records import Limits

__all__ = ["CgroupLayout", "RunCgroup", "cgroup_layout", "make_cgroup", "remove_stale_cgroups"]

CPU_PERIOD_US = 100_000
_LEAST_QUOTA_US = 1000  # the kernel's least quota: 1% of a core

# The file that proves a controller works in a run's cgroup, and a value to write there.
_V1_PROBES = {
    "pids": ("pids.max", "8"),
    "memory": ("memory.limit_in_bytes", str(64 << 20)),
    "cpu": ("cpu.cfs_quota_us", str(CPU_PERIOD_US)),
    "cputime": ("cpuacct.usage", None),
}
_V2_PROBES = {
    "pids": ("pids.max", "8"),
    "memory": ("memory.max", str(64 << 20)),
    "cpu": ("cpu.max", f"{CPU_PERIOD_US} {CPU_PERIOD_US}"),
    "cputime": ("cpu.stat", None),
}
_V1_HIERARCHY = {"pids": "pids", "memory": "memory", "cpu": "cpu", "cputime": "cpuacct"}
# The v1 ``devices`` controller: the fallback without Landlock puts each run in a cgroup that
# allows the nodes bubblewrap binds alone (``landlock.DEVICES``), checked by the kernel at every
# open and mknod of a device, whatever its path. Writing its lists takes CAP_SYS_ADMIN; v2 has
# no file for it (a BPF program): not made there.


@dataclass(frozen=True)
class CgroupLayout:
    """Where runs' cgroups are made: ``parents`` maps each working controller (pids, memory,
    cpu, cputime) to the directory under which a run's cgroup is created."""

    version: int
    parents: dict[str, Path]
    # where a run's v1 ``devices`` cgroup can be made (None: nowhere); only the fallback
    # without Landlock asks for one (``RunCgroup(devices=True)``)
    devices: Path | None = None

    def describe(self, devices: bool = False) -> str:
        names = sorted([*self.parents, *(["devices"] if devices else [])])
        return f"cgroup-v{self.version}({','.join(names)})"


def _own_cgroup_paths() -> dict[str, str]:
    """/proc/self/cgroup as {controller or "" (v2): path}."""
    paths = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _, controllers, path = line.split(":", 2)
            for c in controllers.split(",") if controllers else [""]:
                paths[c] = path
    return paths


def _cgroup_mounts() -> list[tuple[str, str, str, set[str]]]:
    """(fstype, mount point, mount root, options) of every cgroup file system."""
    mounts = []
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            left, _, right = line.partition(" - ")
            fields, rfields = left.split(), right.split()
            if len(rfields) >= 3 and rfields[0] in ("cgroup", "cgroup2"):
                opts = set(rfields[2].split(","))
                mounts.append((rfields[0], fields[4], fields[3], opts))
    return mounts


def _parent_dir(mount_point: str, mount_root: str, own: str | None) -> Path:
    """Our own cgroup's directory in this mount (so runs nest under our limits), else the
    mount's top."""
    if own is not None and own.startswith(mount_root):
        rel = own[len(mount_root) :].lstrip("/")
        candidate = Path(mount_point) / rel
        if candidate.is_dir():
            return candidate
    return Path(mount_point)


def _probe(parent: Path, probes: dict[str, tuple[str, str | None]], wanted: list[str]) -> list[str]:
    """The controllers of ``wanted`` that work in a fresh cgroup under ``parent``."""
    probe = parent / f"rc-probe-{uuid.uuid4().hex[:8]}"
    try:
        probe.mkdir()
    except OSError:
        return []
    ok = []
    try:
        for name in wanted:
            file, value = probes[name]
            with contextlib.suppress(OSError):
                if value is not None:
                    (probe / file).write_text(value)
                    ok.append(name)
                elif (probe / file).exists():
                    ok.append(name)
    finally:
        with contextlib.suppress(OSError):
            probe.rmdir()
    return ok


def _v2_layout(mounts, own) -> CgroupLayout | None:
    for fstype, point, root, _ in mounts:
        if fstype != "cgroup2":
            continue
        parent = _parent_dir(point, root, own.get(""))
        with contextlib.suppress(OSError):  # lets our runs' cgroups use these controllers
            (parent / "cgroup.subtree_control").write_text("+pids +memory +cpu")
        works = _probe(parent, _V2_PROBES, list(_V2_PROBES))
        if works:
            return CgroupLayout(2, {name: parent for name in works})
    return None


def _v1_layout(mounts, own) -> CgroupLayout | None:
    parents = {}
    for name, hierarchy in _V1_HIERARCHY.items():
        for fstype, point, root, opts in mounts:
            if fstype == "cgroup" and hierarchy in opts:
                parent = _parent_dir(point, root, own.get(hierarchy))
                if _probe(parent, _V1_PROBES, [name]):
                    parents[name] = parent
                    break
    return CgroupLayout(1, parents) if parents else None


@lru_cache(maxsize=1)
def cgroup_layout() -> CgroupLayout | None:
    """The richest cgroup setup this machine lets us make (v2 where writable, else v1), or None."""
    mounts, own = _cgroup_mounts(), _own_cgroup_paths()
    found = [lay for lay in (_v2_layout(mounts, own), _v1_layout(mounts, own)) if lay]
    layout = max(found, key=lambda lay: len(lay.parents), default=None)
    if layout is not None:
        layout = replace(layout, devices=_devices_parent(mounts, own))
        remove_stale_cgroups(layout)
    return layout


def _devices_parent(mounts, own) -> Path | None:
    """Our cgroup's folder in the v1 ``devices`` hierarchy, where a child that refuses every
    device can be made (CAP_SYS_ADMIN), else None."""
    for fstype, point, root, opts in mounts:
        if fstype == "cgroup" and "devices" in opts:
            parent = _parent_dir(point, root, own.get("devices"))
            probe = parent / f"rc-probe-{uuid.uuid4().hex[:8]}"
            try:
                probe.mkdir()
            except OSError:
                return None
            try:
                (probe / "devices.deny").write_text("a")
                return parent
            except OSError:
                return None
            finally:
                with contextlib.suppress(OSError):
                    probe.rmdir()
    return None


def remove_stale_cgroups(layout: CgroupLayout, older_than_s: float = 600.0) -> None:
    """Empty run cgroups left by scorers that were killed before their cleanup ran."""
    for parent in {*layout.parents.values(), *([layout.devices] if layout.devices else [])}:
        for path in parent.glob("rc-sandbox-*"):
            with contextlib.suppress(OSError):
                stale = time.time() - path.stat().st_mtime > older_than_s
                if stale and not (path / "cgroup.procs").read_text().strip():
                    path.rmdir()


# ----------------------------------------------------------------------------- one run


class RunCgroup:
    """One run's cgroup: every process of the run is put in it before exec and cannot leave
    it (inside bwrap it runs as an unprivileged uid with no cgroup file system mounted)."""

    def __init__(self, layout: CgroupLayout, limits: Limits, devices: bool = False) -> None:
        """``devices``: the run may open only ``landlock.DEVICES`` (the layout's ``devices``)."""
        self.layout = layout
        name = f"rc-sandbox-{uuid.uuid4().hex}"
        self.dirs: dict[str, Path] = {c: p / name for c, p in layout.parents.items()}
        if devices and layout.devices is not None:
            self.dirs["devices"] = layout.devices / name
        self._clock: int | None = None  # the CPU clock's file, open once (``cpu_time_s``)
        for path in self.unique_dirs():
            path.mkdir()
        quota = str(max(_LEAST_QUOTA_US, int(limits.cpu_cores * CPU_PERIOD_US)))
        self.quota = quota
        mem, max_processes = str(limits.memory_mb << 20), limits.max_processes
        if layout.version == 2:
            self._write("pids", "pids.max", str(max_processes))
            self._write("memory", "memory.max", mem)
            self._write("memory", "memory.swap.max", "0", required=False)
            self._write("cpu", "cpu.max", f"{quota} {CPU_PERIOD_US}")
        else:
            self._write("pids", "pids.max", str(max_processes))
            self._write("memory", "memory.limit_in_bytes", mem)
            self._write("memory", "memory.memsw.limit_in_bytes", mem, required=False)
            self._write("cpu", "cpu.cfs_period_us", str(CPU_PERIOD_US))
            self._write("cpu", "cpu.cfs_quota_us", quota)
        if "devices" in self.dirs:
            self._write("devices", "devices.deny", "a")
            for node in _device_numbers():
                self._write("devices", "devices.allow", f"c {node} rwm")

    def unique_dirs(self) -> list[Path]:
        return sorted(set(self.dirs.values()))

    def _write(self, controller: str, file: str, value: str, required: bool = True) -> None:
        if controller in self.dirs:
            try:
                (self.dirs[controller] / file).write_text(value)
            except OSError:
                if required:
                    raise

    def hold_cpu(self, held: bool) -> None:
        """The run's CPU quota at its least (1% of a core) while ``held``, else its own:
        ``filetable`` counts what it holds without it opening more meanwhile. A held run's
        CPU clock stands still, so its time limits lose nothing."""
        quota = str(_LEAST_QUOTA_US) if held else self.quota
        with contextlib.suppress(OSError):  # ended meanwhile: its cgroup is going
            if self.layout.version == 2:
                self._write("cpu", "cpu.max", f"{quota} {CPU_PERIOD_US}")
            else:
                self._write("cpu", "cpu.cfs_quota_us", quota)

    def procs_files(self) -> list[str]:
        return [str(d / "cgroup.procs") for d in self.unique_dirs()]

    def cpu_time_s(self) -> float | None:
        """CPU seconds every process of the run has used so far (user + system). Read through
        a descriptor kept open (``pread``: 0.6 us, against 10 us for an open and read): the
        scorer reads this clock for every result line, 90 thousand times for HumanEval(+)."""
        fd = self._clock_fd()
        if fd is None:
            return None
        try:
            text = os.pread(fd, 4096, 0)
            if self.layout.version == 1:
                return int(text) / 1e9
            for line in text.splitlines():
                if line.startswith(b"usage_usec "):
                    return int(line.split()[1]) / 1e6
        except (OSError, ValueError):
            pass
        return None

    def _clock_fd(self) -> int | None:
        if self._clock is None:
            path = self.dirs.get("cputime")
            if path is None:
                return None
            name = "cpuacct.usage" if self.layout.version == 1 else "cpu.stat"
            try:
                self._clock = os.open(path / name, os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                return None
        return self._clock

    def oom_kills(self) -> int:
        """Processes of the run the kernel killed at its memory limit (0 where not counted)."""
        path = self.dirs.get("memory")
        if path is None:
            return 0
        name = "memory.events" if self.layout.version == 2 else "memory.oom_control"
        with contextlib.suppress(OSError, ValueError):
            for line in (path / name).read_text().splitlines():
                if line.startswith("oom_kill "):
                    return int(line.split()[1])
        return 0

    def pids(self) -> list[int]:
        """The run's processes now."""
        pids: set[int] = set()
        for path in self.unique_dirs():
            with contextlib.suppress(OSError, ValueError):
                pids.update(int(p) for p in (path / "cgroup.procs").read_text().split())
        return sorted(pids)

    def kill(self) -> None:
        """SIGKILL every process of the run (cgroup.kill where the kernel has it) until none is
        left."""
        for path in self.unique_dirs():
            with contextlib.suppress(OSError):
                (path / "cgroup.kill").write_text("1")
        for attempt in range(600):
            pids = self.pids()
            if not pids:
                return
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            # killed processes leave within a millisecond or two: look again soon, then less
            # often (this wait is on the path of every verdict)
            time.sleep(0.0005 if attempt < 20 else 0.005)

    def remove(self) -> None:
        self.kill()
        if self._clock is not None:
            os.close(self._clock)
            self._clock = None
        for path in self.unique_dirs():
            for _ in range(100):
                try:
                    path.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.01)


@lru_cache(maxsize=1)
def _device_numbers() -> tuple[str, ...]:
    """``major:minor`` of ``landlock.DEVICES`` (the character devices found here)."""
    found = []
    for path in DEVICES:
        with contextlib.suppress(OSError):
            rdev = os.stat(path).st_rdev
            found.append(f"{os.major(rdev)}:{os.minor(rdev)}")
    return tuple(found)


def make_cgroup(
    layout: CgroupLayout | None, limits: Limits, devices: bool = False
) -> RunCgroup | None:
    """A run's cgroup under ``layout`` with ``limits`` written (None where there is no layout);
    ``devices``: in a v1 ``devices`` cgroup too, where the layout has one."""
    if layout is None:
        return None
    try:
        return RunCgroup(layout, limits, devices)
    except OSError as exc:
        raise RuntimeError(f"sandbox: cannot set up the run's cgroup: {exc}") from None
