"""The one place that runs untrusted (model-written) code.

API for callers (construct/, eval/score.py, eval/multiple.py and new MultiPL-E languages)::

    run_sandboxed(argv, files=..., stdin=..., timeout_s=WALL_BACKSTOP, cpu_s=CPU_LIMIT,
                  memory_mb=..., max_processes=..., cpu_cores=..., ro_binds=[toolchain dirs])
    PreparedRun(argv, <same limits>).run(stdin, timeout_s=..., cpu_s=...)  # started ahead

Limits are per run (the whole process tree, not per process): ``memory_mb`` (cgroup memory
limit, and RLIMIT_AS per process), ``max_processes`` (cgroup pids), ``cpu_s`` (CPU seconds of the
run's cgroup: load on the machine does not change it), ``cpu_cores`` (CPU quota), ``timeout_s``
(wall-clock backstop). ``ro_binds`` lists extra host paths a toolchain needs, bound read-only
(bwrap); ``toolchain_binds(tools)`` finds them for programs named on PATH.

Isolation levels, strongest first (``isolation_level()`` names exactly what is in force):

- ``bwrap``: bubblewrap with its own PID, network, IPC, UTS and cgroup namespaces; the program
  runs as uid/gid 65534 ON THE HOST (root-started bwrap makes no user namespace and ``setpriv``
  drops to 65534; started by another user, the user namespace maps 65534 to that user) with no
  capability in any set, under the seccomp filter ``_harness._seccomp_filter(machine, None)``;
  ``/proc/sys`` and ``/proc/pressure`` absent; a file system made only of what a program needs,
  read-only (``/usr`` and the library dirs, a few ``/etc`` files, the Python
  installation and site-packages, ``ro_binds``), a private size-capped ``/tmp`` (the working
  directory lives there), ``/dev/shm`` and ``/dev``. No data, cache, home, host socket or cgroup
  file system is visible. When the PID namespace's first process dies the kernel kills every
  process in it, so nothing outlives the run.
- ``rlimits`` (fallback where bubblewrap or user namespaces are missing): a new session and
  process group, resource limits, a private working directory as ``cwd`` and ``TMPDIR``, a sweep
  of ``/proc`` for processes tagged with the run's marker (children that called ``setsid``), and
  the same seccomp filter for every program (installed between fork and exec), and for Python
  programs a stricter one plus an audit hook that refuses writes and deletes outside the
  working directory, network connections, signals to other processes and new programs.
  Weaker: programs run as the caller (as root: root's files), and native code (ctypes) can
  bypass the audit hook.

Both levels put each run in its own cgroup (v2, or v1 controllers, where the machine lets us
create one): ``memory`` (the whole tree's memory, /dev/shm included), ``pids``, ``cpu`` (quota)
and CPU accounting (the CPU-time limit). The whole tree is killed at the verdict. The wall-clock
backstop kills from outside with SIGKILL, which no program can ignore. Output is capped; a run
that floods it is killed.

Force a level with ``REFLECTIONCODER_SANDBOX=bwrap|rlimits`` (``auto`` by default).
"""

from __future__ import annotations

import contextlib
import ctypes
import glob
import os
import resource
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

__all__ = [
    "ExecResult",
    "PreparedRun",
    "isolation_level",
    "run_python",
    "run_sandboxed",
    "toolchain_binds",
]

# Mount points inside the bwrap sandbox (both under the private /tmp).
_SRC_IN_BOX = "/tmp/src"
_WORK_IN_BOX = "/tmp/work"
_MARKER_ENV = "REFLECTIONCODER_SANDBOX_RUN"
_PR_SET_PDEATHSIG = 1
_SIG_DFL, _SIG_IGN = 0, 1  # C's signal dispositions (signal.h)
SANDBOX_UID = 65534  # "nobody": the uid and gid programs have inside bwrap
# What every program gets, read-only: the system's programs and libraries, and the few /etc
# files that loaders and toolchains read (no passwd, shadow, hosts, ssh, ...).
_SYSTEM_PATHS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
_ETC_PATTERNS = (
    "alternatives",
    "ld.so.cache",
    "ld.so.conf",
    "ld.so.conf.d",
    "localtime",
    "java-*",
    "php",
    "php[0-9]*",
    "ssl/openssl.cnf",
    "mono",
)
_CPU_PERIOD_US = 100_000


@dataclass(frozen=True)
class ExecResult:
    """What a sandboxed run printed and how it ended.

    ``exit_code`` is the process's status (negative: killed by that signal) or None when the
    sandbox killed it (time limit or output flood). Output beyond the cap is dropped and
    ``output_truncated`` is set; the run is then killed. ``cpu_time_s``: CPU seconds the whole
    run used (its cgroup), None where no cgroup counts it.
    """

    stdout: str
    stderr: str
    exit_code: int | None
    timed_out: bool
    output_truncated: bool
    duration_s: float
    isolation: str
    cpu_time_s: float | None = None

    @property
    def ok(self) -> bool:
        """Exited by itself with status 0."""
        return self.exit_code == 0 and not self.timed_out and not self.output_truncated


# ----------------------------------------------------------------------------- detection


def _bwrap_path() -> str | None:
    return shutil.which("bwrap")


@lru_cache(maxsize=1)
def _bwrap_works() -> bool:
    """True when bubblewrap can create the namespaces we ask for on this machine."""
    exe = _bwrap_path()
    if exe is None:
        return False
    if os.geteuid() == 0 and not os.path.exists(_setpriv_path()):
        return False  # root without setpriv: the program would keep host root's uid
    fd = _box_seccomp_fd()
    with tempfile.TemporaryDirectory(prefix="rc-probe-") as tmp:
        os.chmod(tmp, 0o755)
        argv = _bwrap_argv(exe, Path(tmp), hide=(), ro_binds=(), seccomp_fd=fd) + ["/bin/true"]
        try:
            proc = subprocess.run(
                argv, capture_output=True, timeout=20, pass_fds=() if fd is None else (fd,)
            )
        except (OSError, subprocess.TimeoutExpired):
            return False
        finally:
            if fd is not None:
                os.close(fd)
    return proc.returncode == 0


# The file that proves a controller works in a run's cgroup, and a value to write there.
_V1_PROBES = {
    "pids": ("pids.max", "8"),
    "memory": ("memory.limit_in_bytes", str(64 << 20)),
    "cpu": ("cpu.cfs_quota_us", str(_CPU_PERIOD_US)),
    "cputime": ("cpuacct.usage", None),
}
_V2_PROBES = {
    "pids": ("pids.max", "8"),
    "memory": ("memory.max", str(64 << 20)),
    "cpu": ("cpu.max", f"{_CPU_PERIOD_US} {_CPU_PERIOD_US}"),
    "cputime": ("cpu.stat", None),
}
_V1_HIERARCHY = {"pids": "pids", "memory": "memory", "cpu": "cpu", "cputime": "cpuacct"}


@dataclass(frozen=True)
class _CgroupLayout:
    """Where runs' cgroups are made: ``parents`` maps each working controller (pids, memory,
    cpu, cputime) to the directory under which a run's cgroup is created."""

    version: int
    parents: dict[str, Path]

    def describe(self) -> str:
        return f"cgroup-v{self.version}({','.join(sorted(self.parents))})"


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


def _v2_layout(mounts, own) -> _CgroupLayout | None:
    for fstype, point, root, _ in mounts:
        if fstype != "cgroup2":
            continue
        parent = _parent_dir(point, root, own.get(""))
        with contextlib.suppress(OSError):  # lets our runs' cgroups use these controllers
            (parent / "cgroup.subtree_control").write_text("+pids +memory +cpu")
        works = _probe(parent, _V2_PROBES, list(_V2_PROBES))
        if works:
            return _CgroupLayout(2, {name: parent for name in works})
    return None


def _v1_layout(mounts, own) -> _CgroupLayout | None:
    parents = {}
    for name, hierarchy in _V1_HIERARCHY.items():
        for fstype, point, root, opts in mounts:
            if fstype == "cgroup" and hierarchy in opts:
                parent = _parent_dir(point, root, own.get(hierarchy))
                if _probe(parent, _V1_PROBES, [name]):
                    parents[name] = parent
                    break
    return _CgroupLayout(1, parents) if parents else None


@lru_cache(maxsize=1)
def _cgroup_layout() -> _CgroupLayout | None:
    """The richest cgroup setup this machine lets us make (v2 where writable, else v1), or None."""
    mounts, own = _cgroup_mounts(), _own_cgroup_paths()
    found = [lay for lay in (_v2_layout(mounts, own), _v1_layout(mounts, own)) if lay]
    layout = max(found, key=lambda lay: len(lay.parents), default=None)
    if layout is not None:
        _remove_stale_cgroups(layout)
    return layout


def _remove_stale_cgroups(layout: _CgroupLayout, older_than_s: float = 600.0) -> None:
    """Empty run cgroups left by scorers that were killed before their cleanup ran."""
    for parent in set(layout.parents.values()):
        for path in parent.glob("rc-sandbox-*"):
            with contextlib.suppress(OSError):
                stale = time.time() - path.stat().st_mtime > older_than_s
                if stale and not (path / "cgroup.procs").read_text().strip():
                    path.rmdir()


def isolation_level() -> str:
    """Exactly what runs get here, e.g.
    ``bwrap(uid=65534,host-uid=65534,caps=none,userns=none,seccomp,fs=minimal-ro)+cgroup-v1(...)
    +time=cpu``: the level (``bwrap`` or ``rlimits``), the cgroup controllers in force, and
    whether time limits count CPU time of the run's cgroup or the wall clock."""
    from reflectioncoder.eval import _harness

    wanted = os.environ.get("REFLECTIONCODER_SANDBOX", "auto")
    if wanted not in ("auto", "bwrap", "rlimits"):
        raise ValueError(f"REFLECTIONCODER_SANDBOX must be auto, bwrap or rlimits, got {wanted!r}")
    if wanted == "bwrap" and not _bwrap_works():
        raise RuntimeError("REFLECTIONCODER_SANDBOX=bwrap but bubblewrap cannot run here")
    if wanted != "rlimits" and _bwrap_works():
        host_uid = SANDBOX_UID if os.geteuid() == 0 else os.geteuid()
        filtered = ",seccomp" if _harness._seccomp_filter(os.uname().machine, None) else ""
        level = (
            f"bwrap(uid={SANDBOX_UID},host-uid={host_uid},caps=none,userns=none{filtered},"
            "fs=minimal-ro)"
        )
    else:
        level = "rlimits(caller-uid,audit-guard" + (",seccomp)" if seccomp_available() else ")")
    layout = _cgroup_layout()
    if layout is not None:
        level += "+" + layout.describe()
    cpu_clock = layout is not None and "cputime" in layout.parents
    return level + ("+time=cpu" if cpu_clock else "+time=wall")


# ----------------------------------------------------------------------------- bwrap


def _python_paths() -> list[str]:
    """The interpreter, its standard library and the site-packages programs import from."""
    paths = {sys.prefix, sys.base_prefix, sys.exec_prefix}
    paths.add(os.path.dirname(os.path.realpath(sys.executable)))
    paths.update(p for p in sys.path if "-packages" in p)  # site dirs, .pth-added ones too
    return sorted(p for p in paths if os.path.isdir(p))


def toolchain_binds(tools: Sequence[str]) -> list[str]:
    """Host directories to bind for programs found on PATH outside the system directories
    (e.g. ``~/.cargo/bin/rustc``: its directory and where its symlinks lead)."""
    binds: set[str] = set()
    for tool in tools:
        found = shutil.which(tool)
        if found is None:
            continue
        for path in (found, os.path.realpath(found)):
            parent = os.path.dirname(path)
            if not any(_inside(parent, s) for s in _SYSTEM_PATHS):
                binds.add(parent)
    return sorted(binds)


def _ancestors(path: str) -> list[str]:
    """``/a/b/c`` -> ``["/a", "/a/b", "/a/b/c"]``."""
    parts = [p for p in path.split("/") if p]
    return ["/" + "/".join(parts[: i + 1]) for i in range(len(parts))]


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def _bwrap_argv(
    exe: str,
    src: Path,
    hide: Sequence[str],
    ro_binds: Sequence[str],
    tmp_mb: int = 512,
    seccomp_fd: int | None = None,
) -> list[str]:
    """Namespaces, no privileges, and a file system of only what programs need (read-only).

    Started by root, bwrap makes no user namespace (its uid 65534 would be host root): it
    mounts as root, then ``setpriv`` drops the program to host uid/gid 65534 with no
    capability at all, so every root-owned host file (``/proc/sys``, the bound device nodes)
    stays out of its reach. Started by another user, the user namespace maps 65534 to that
    unprivileged user. ``seccomp_fd``: a descriptor holding ``_harness``'s box filter."""
    uid = str(SANDBOX_UID)
    argv = [exe, "--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts"]
    argv += ["--unshare-cgroup-try", "--die-with-parent", "--new-session", "--cap-drop", "ALL"]
    as_root = os.geteuid() == 0
    if as_root:  # setpriv needs these three to drop them for good (and nothing else)
        argv += [a for cap in _DROP_CAPS for a in ("--cap-add", cap)]
    else:
        argv += ["--unshare-user", "--uid", uid, "--gid", uid, "--disable-userns"]
    if seccomp_fd is not None:
        argv += ["--seccomp", str(seccomp_fd)]
    argv += ["--hostname", "sandbox", "--proc", "/proc", "--dev", "/dev"]
    for path in _PROC_COVERED:  # kernel settings and triggers: absent (empty, read-only)
        argv += ["--perms", "0555", "--tmpfs", path, "--remount-ro", path]
    for mount in ("/tmp", "/dev/shm"):
        argv += ["--perms", "1777", "--size", str(tmp_mb << 20), "--tmpfs", mount]
    for path in _SYSTEM_PATHS:
        if os.path.islink(path):
            argv += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            argv += ["--ro-bind", path, path]
    bound = list(_SYSTEM_PATHS)
    etc = sorted({p for pat in _ETC_PATTERNS for p in glob.glob(os.path.join("/etc", pat))})
    binds = []
    for path in [*etc, *_python_paths(), *map(os.path.abspath, ro_binds)]:
        if any(_inside(path, b) for b in bound):
            continue  # already there (binding again would undo a hide)
        binds += ["--ro-bind", path, path]
        bound.append(path)
    # the directories leading to a bind, made 0755 first (bwrap makes them 0700 as root: the
    # box's uid could not reach the toolchains under /root)
    parents = {os.path.dirname(p) for p in binds[2::3]}
    parents = {a for p in parents for a in _ancestors(p) if not any(_inside(a, b) for b in bound)}
    for path in sorted(parents, key=lambda p: p.count("/")):
        argv += ["--perms", "0755", "--dir", path]
    argv += binds
    for path in map(os.path.abspath, hide):  # data or caches inside a bound directory
        if os.path.isdir(path) and any(_inside(path, b) for b in bound):
            argv += ["--tmpfs", path]
    argv += ["--ro-bind", str(src), _SRC_IN_BOX, "--perms", "0777", "--dir", _WORK_IN_BOX]
    argv += ["--chdir", _WORK_IN_BOX, "--remount-ro", "/"]  # the box's root: nothing new on top
    argv += ["--setenv", "TMPDIR", "/tmp", "--setenv", "HOME", _WORK_IN_BOX, "--"]
    if as_root:
        argv += [_setpriv_path(), f"--reuid={uid}", f"--regid={uid}", "--clear-groups"]
        argv += ["--inh-caps=-all", "--bounding-set=-all", "--no-new-privs", "--"]
    return argv


# /proc's files that write to the kernel beyond the process's own entries: sysctls (bwrap
# leaves /proc/sys writable when started by root) and pressure triggers
_PROC_COVERED = ("/proc/sys", "/proc/pressure")
_DROP_CAPS = ("CAP_SETUID", "CAP_SETGID", "CAP_SETPCAP")


def _setpriv_path() -> str:
    return shutil.which("setpriv", path="/usr/bin:/bin") or "/usr/bin/setpriv"


def _box_seccomp_fd() -> int | None:
    """A descriptor (a memfd at offset 0) holding the box's seccomp program, for bwrap's
    ``--seccomp``; None on a machine we have no syscall table for."""
    from reflectioncoder.eval import _harness

    code = _harness._seccomp_filter(os.uname().machine, None)
    if code is None:
        return None
    fd = os.memfd_create("rc-seccomp", 0)
    os.write(fd, code)
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


# ----------------------------------------------------------------------------- cgroups


class _RunCgroup:
    """One run's cgroup: every process of the run is put in it before exec and cannot leave
    it (inside bwrap it runs as an unprivileged uid with no cgroup file system mounted)."""

    def __init__(
        self, layout: _CgroupLayout, memory_mb: int, max_processes: int, cpu_cores: float
    ) -> None:
        self.layout = layout
        name = f"rc-sandbox-{uuid.uuid4().hex}"
        self.dirs: dict[str, Path] = {c: p / name for c, p in layout.parents.items()}
        for path in self.unique_dirs():
            path.mkdir()
        quota = str(max(1000, int(cpu_cores * _CPU_PERIOD_US)))
        mem = str(memory_mb << 20)
        if layout.version == 2:
            self._write("pids", "pids.max", str(max_processes))
            self._write("memory", "memory.max", mem)
            self._write("memory", "memory.swap.max", "0", required=False)
            self._write("cpu", "cpu.max", f"{quota} {_CPU_PERIOD_US}")
        else:
            self._write("pids", "pids.max", str(max_processes))
            self._write("memory", "memory.limit_in_bytes", mem)
            self._write("memory", "memory.memsw.limit_in_bytes", mem, required=False)
            self._write("cpu", "cpu.cfs_period_us", str(_CPU_PERIOD_US))
            self._write("cpu", "cpu.cfs_quota_us", quota)

    def unique_dirs(self) -> list[Path]:
        return sorted(set(self.dirs.values()))

    def _write(self, controller: str, file: str, value: str, required: bool = True) -> None:
        if controller in self.dirs:
            try:
                (self.dirs[controller] / file).write_text(value)
            except OSError:
                if required:
                    raise

    def procs_files(self) -> list[str]:
        return [str(d / "cgroup.procs") for d in self.unique_dirs()]

    def cpu_time_s(self) -> float | None:
        """CPU seconds every process of the run has used so far (user + system)."""
        path = self.dirs.get("cputime")
        if path is None:
            return None
        try:
            if self.layout.version == 1:
                return int((path / "cpuacct.usage").read_text()) / 1e9
            for line in (path / "cpu.stat").read_text().splitlines():
                if line.startswith("usage_usec "):
                    return int(line.split()[1]) / 1e6
        except (OSError, ValueError):
            pass
        return None

    def _pids(self) -> list[int]:
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
            pids = self._pids()
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
        for path in self.unique_dirs():
            for _ in range(100):
                try:
                    path.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.01)


def _make_cgroup(memory_mb: int, max_processes: int, cpu_cores: float) -> _RunCgroup | None:
    layout = _cgroup_layout()
    if layout is None:
        return None
    try:
        return _RunCgroup(layout, memory_mb, max_processes, cpu_cores)
    except OSError as exc:
        raise RuntimeError(f"sandbox: cannot set up the run's cgroup: {exc}") from None


# ----------------------------------------------------------------------------- launch


@contextlib.contextmanager
def _ctrl_c_held() -> Iterator[None]:
    """Hold SIGINT in this thread while forking a sandboxed child. The child runs Python's
    after-fork hooks before ``setsid`` takes it out of the terminal's process group; a Ctrl-C
    landing there raised KeyboardInterrupt inside ``threading._after_fork`` and printed a
    traceback on the user's terminal (1 run in 8 of tests/test_cli_errors.py's Ctrl-C test).
    The child drops a held SIGINT and unblocks it once in its own session (``_preexec``)."""
    held = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)


def _release_ctrl_c(libc: ctypes.CDLL) -> None:
    """In the child, in its own session: discard a SIGINT held since the fork (ignoring a
    signal drops it), unblock SIGINT and give the program its default action."""
    libc.signal(signal.SIGINT, _SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    libc.signal(signal.SIGINT, _SIG_DFL)


def _preexec(
    memory_mb: int,
    cpu_s: float,
    file_size_mb: int,
    open_files: int,
    max_processes: int,
    cgroup_procs: list[str],
    seccomp: bytes | None = None,
):
    """Runs in the child between fork and exec: enter the cgroup, die with the parent, limits;
    ``seccomp``: a filter to install last (the fallback level's, for programs in any language:
    bwrap installs it itself)."""
    from reflectioncoder.eval._harness import install_seccomp

    libc = ctypes.CDLL(None, use_errno=True)
    libc.signal.argtypes = (ctypes.c_int, ctypes.c_void_p)
    libc.signal.restype = ctypes.c_void_p
    prctl = libc.prctl
    cpu_rlimit = int(cpu_s) + 1  # per process; the cgroup's CPU clock is the real limit

    def apply() -> None:
        _release_ctrl_c(libc)
        for procs in cgroup_procs:
            with open(procs, "w") as f:
                f.write("0")
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        mem = memory_mb << 20
        resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
        resource.setrlimit(resource.RLIMIT_CPU, (cpu_rlimit, cpu_rlimit + 1))
        resource.setrlimit(resource.RLIMIT_FSIZE, (file_size_mb << 20, file_size_mb << 20))
        resource.setrlimit(resource.RLIMIT_NOFILE, (open_files, open_files))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        if os.geteuid() != 0:  # root ignores RLIMIT_NPROC; the cgroup covers that case
            # the limit counts ALL of this user's processes and threads, hence the headroom
            nproc = max_processes + 1024
            resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))
        if seccomp is not None and not install_seccomp(seccomp):
            raise OSError("sandbox: the seccomp filter could not be installed")

    return apply


def _sweep_marked(marker: str) -> None:
    """Kill processes that carry this run's marker in their environment (fallback mode: catches
    children that left the process group with setsid)."""
    needle = f"{_MARKER_ENV}={marker}".encode()
    for _ in range(20):
        found = False
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/environ", "rb") as f:
                    if needle not in f.read():
                        continue
            except OSError:
                continue
            found = True
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(int(entry), signal.SIGKILL)
        if not found:
            return
        time.sleep(0.01)


@dataclass(frozen=True)
class _Limits:
    memory_mb: int
    cpu_s: float
    max_processes: int
    cpu_cores: float
    file_size_mb: int
    open_files: int
    tmp_mb: int


class PreparedRun:
    """A sandboxed process started ahead of its input (bwrap, interpreter start-up and imports
    happen while the caller does other work), used for exactly ONE run: ``run`` feeds stdin,
    collects, kills the tree and cleans up; ``discard`` does the last two without running.
    Isolation and limits per run are ``run_sandboxed``'s."""

    def __init__(
        self,
        argv: Sequence[str],
        *,
        files: Mapping[str, str | bytes] | None = None,
        memory_mb: int = 512,
        cpu_s: float = 6,
        max_processes: int = 64,
        cpu_cores: float = 1.0,
        file_size_mb: int = 64,
        open_files: int = 256,
        tmp_mb: int = 512,
        env: Mapping[str, str] | None = None,
        hide: Sequence[str] = (),
        ro_binds: Sequence[str] = (),
        pass_fds: Sequence[int] = (),
    ) -> None:
        for name, value in (("memory_mb", memory_mb), ("cpu_s", cpu_s), ("cpu_cores", cpu_cores)):
            if value <= 0:
                raise ValueError(f"{name} must be > 0, got {value}")
        for path in ro_binds:
            if not os.path.exists(path):
                raise ValueError(f"ro_binds: {path!r} does not exist")
        limits = _Limits(
            memory_mb, cpu_s, max_processes, cpu_cores, file_size_mb, open_files, tmp_mb
        )
        self.level = isolation_level()
        self.cpu_s = cpu_s
        self.root: Path | None = Path(tempfile.mkdtemp(prefix="rc-sandbox-"))
        self.cgroup: _RunCgroup | None = None
        self.proc: subprocess.Popen | None = None
        self.used = False
        try:
            self._start(argv, files, limits, env, hide, ro_binds, pass_fds)
        except BaseException:
            self.discard()
            raise

    def _start(self, argv, files, limits: _Limits, env, hide, ro_binds, pass_fds) -> None:
        assert self.root is not None
        src, work = self.root / "src", self.root / "work"
        src.mkdir(mode=0o755)
        work.mkdir()
        src.chmod(0o755)  # read by the box's unprivileged uid, whatever the umask
        for name, content in (files or {}).items():
            if "/" in name or name.startswith("."):
                raise ValueError(f"files: {name!r} must be a plain file name")
            data = content.encode() if isinstance(content, str) else content
            (src / name).write_bytes(data)
            (src / name).chmod(0o644)
        use_bwrap = self.level.startswith("bwrap")
        box_src, box_work = (_SRC_IN_BOX, _WORK_IN_BOX) if use_bwrap else (str(src), str(work))
        cmd = [a.replace("{src}", box_src).replace("{work}", box_work) for a in argv]
        if use_bwrap and os.path.isabs(cmd[0]):  # "venv/../bin/python": only "bin" is mounted
            cmd[0] = os.path.normpath(cmd[0])
        self.marker = uuid.uuid4().hex
        child_env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "LANG": "C.UTF-8",
            "OMP_NUM_THREADS": "1",
            "PYTHONHASHSEED": "0",
            "PYTHONDONTWRITEBYTECODE": "1",
            "TMPDIR": box_work if not use_bwrap else "/tmp",
            "HOME": box_work,
            _MARKER_ENV: self.marker,
        }
        child_env.update(env or {})
        from reflectioncoder.eval import _harness

        seccomp_fd = _box_seccomp_fd() if use_bwrap else None
        fds = [fd for fd in (seccomp_fd, *pass_fds) if fd is not None]
        try:
            if use_bwrap:
                exe = _bwrap_path() or "bwrap"
                cmd = _bwrap_argv(exe, src, hide, ro_binds, limits.tmp_mb, seccomp_fd) + cmd
            self.cgroup = _make_cgroup(limits.memory_mb, limits.max_processes, limits.cpu_cores)
            with _ctrl_c_held():  # until the child is in its own session (_preexec)
                self.proc = subprocess.Popen(
                    cmd,
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    cwd=str(work),
                    env=child_env,
                    start_new_session=True,
                    close_fds=True,
                    pass_fds=fds,
                    preexec_fn=_preexec(
                        limits.memory_mb,
                        limits.cpu_s,
                        limits.file_size_mb,
                        limits.open_files,
                        limits.max_processes,
                        self.cgroup.procs_files() if self.cgroup else [],
                        None if use_bwrap else _harness._seccomp_filter(os.uname().machine, None),
                    ),
                )
        finally:
            if seccomp_fd is not None:
                os.close(seccomp_fd)

    def cpu_time_s(self) -> float | None:
        """CPU seconds the run's whole process tree has used since it started (None where no
        cgroup counts it)."""
        return self.cgroup.cpu_time_s() if self.cgroup is not None else None

    def run(
        self,
        stdin: str | bytes = b"",
        *,
        timeout_s: float = 5.0,
        cpu_s: float | None = None,
        output_limit: int = 1 << 20,
        on_stdout_line: Callable[[bytes], bool] | None = None,
    ) -> ExecResult:
        """Feed ``stdin`` and wait: at most ``cpu_s`` CPU seconds of the whole tree from now
        (the constructor's by default) and ``timeout_s`` of wall clock; see ``run_sandboxed``."""
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        if self.used or self.proc is None:
            raise RuntimeError("a PreparedRun runs once")
        self.used = True
        data_in = stdin.encode() if isinstance(stdin, str) else stdin
        out_chunks: dict[int, list[bytes]] = {1: [], 2: []}
        sizes = {1: 0, 2: 0}
        start = time.monotonic()
        cpu0 = self.cpu_time_s()
        cpu_deadline = None if cpu0 is None else cpu0 + (cpu_s or self.cpu_s)
        cpu_used = None
        try:
            timed_out, truncated, stopped = _pump(
                self.proc,
                data_in,
                (start + timeout_s, cpu_deadline, self.cpu_time_s),
                output_limit,
                out_chunks,
                sizes,
                on_stdout_line,
            )
            cpu_now = self.cpu_time_s()
            cpu_used = None if cpu0 is None or cpu_now is None else cpu_now - cpu0
        finally:
            self.discard()
        exit_code = None if (timed_out or truncated or stopped) else self.proc.returncode
        return ExecResult(
            stdout=b"".join(out_chunks[1]).decode("utf-8", "replace"),
            stderr=b"".join(out_chunks[2]).decode("utf-8", "replace"),
            exit_code=exit_code,
            timed_out=timed_out,
            output_truncated=truncated,
            duration_s=time.monotonic() - start,
            isolation=self.level,
            cpu_time_s=cpu_used,
        )

    def discard(self) -> None:
        """Kill whatever runs and remove the run's directory and cgroup (idempotent)."""
        self.used = True
        if self.root is None:
            return
        root, cgroup, self.root, self.cgroup = self.root, self.cgroup, None, None
        try:
            if self.proc is not None:
                _kill_tree(self.proc, cgroup, self.marker)  # every process is gone on return
        finally:
            # removing the empty cgroup (tens of ms in v1) and the run's files: off the path of
            # the next verdict; not a daemon thread, so the interpreter waits for it at exit
            threading.Thread(target=_remove_run, args=(cgroup, root)).start()


def run_sandboxed(
    argv: Sequence[str],
    *,
    files: Mapping[str, str | bytes] | None = None,
    stdin: str | bytes = b"",
    timeout_s: float = 5.0,
    memory_mb: int = 512,
    cpu_s: float | None = None,
    max_processes: int = 64,
    cpu_cores: float = 1.0,
    file_size_mb: int = 64,
    open_files: int = 256,
    tmp_mb: int = 512,
    output_limit: int = 1 << 20,
    env: Mapping[str, str] | None = None,
    hide: Sequence[str] = (),
    ro_binds: Sequence[str] = (),
    on_stdout_line: Callable[[bytes], bool] | None = None,
    pass_fds: Sequence[int] = (),
) -> ExecResult:
    """Run ``argv`` in the sandbox and return what it printed.

    ``files`` are written, read-only to the program, into a source directory; ``{src}`` and
    ``{work}`` in ``argv`` are replaced by that directory and the writable working directory
    (the program's cwd). Limits cover the whole process tree: ``cpu_s`` CPU seconds (default
    ``timeout_s``; counted by the run's cgroup, so machine load does not change it),
    ``timeout_s`` wall-clock seconds (the backstop for programs that wait), ``memory_mb`` (all
    processes together, /dev/shm and /tmp included), ``max_processes``, ``cpu_cores`` (quota).
    ``hide`` lists host directories the program must not see; ``ro_binds`` host paths a
    toolchain needs (bwrap binds nothing else but the system's and Python's directories).
    ``output_limit`` caps stdout and stderr each, in bytes. ``on_stdout_line`` sees each line
    of stdout as it arrives (a trusted caller judging results while the run goes on); when it
    returns True the run is stopped there and killed (``exit_code`` None); stdout is then not
    kept, and ``output_limit`` caps each line instead. ``pass_fds``: descriptors the program
    inherits (the caller's numbers).
    """
    if timeout_s <= 0:
        raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
    prepared = PreparedRun(
        argv,
        files=files,
        memory_mb=memory_mb,
        cpu_s=cpu_s if cpu_s is not None else timeout_s,
        max_processes=max_processes,
        cpu_cores=cpu_cores,
        file_size_mb=file_size_mb,
        open_files=open_files,
        tmp_mb=tmp_mb,
        env=env,
        hide=hide,
        ro_binds=ro_binds,
        pass_fds=pass_fds,
    )
    return prepared.run(
        stdin, timeout_s=timeout_s, output_limit=output_limit, on_stdout_line=on_stdout_line
    )


def _pump(
    proc: subprocess.Popen,
    data_in: bytes,
    deadlines: tuple[float, float | None, Callable[[], float | None]],
    limit: int,
    chunks: dict[int, list[bytes]],
    sizes: dict[int, int],
    on_line: Callable[[bytes], bool] | None,
) -> tuple[bool, bool, bool]:
    """Feed stdin and collect stdout/stderr until the process exits, a deadline passes (wall
    clock, or the run's CPU clock), the output exceeds ``limit`` or ``on_line`` says stop.
    Returns (timed_out, truncated, stopped)."""
    deadline, cpu_deadline, cpu_clock = deadlines
    poll = 0.5 if cpu_deadline is None else 0.05

    def over_time() -> bool:
        if time.monotonic() >= deadline:
            return True
        used = cpu_clock() if cpu_deadline is not None else None
        return used is not None and used >= cpu_deadline  # type: ignore[operator]

    sel = selectors.DefaultSelector()
    assert proc.stdin and proc.stdout and proc.stderr
    streams = {proc.stdout.fileno(): 1, proc.stderr.fileno(): 2}
    for fd in streams:
        os.set_blocking(fd, False)
        sel.register(fd, selectors.EVENT_READ)
    view, pos = memoryview(data_in), 0
    in_fd = proc.stdin.fileno()
    if data_in:
        os.set_blocking(in_fd, False)
        sel.register(in_fd, selectors.EVENT_WRITE)
    else:
        proc.stdin.close()
    open_reads = len(streams)
    partial: list[bytes] = []  # the line being read, in chunks: joined once, when it ends
    partial_size = 0
    try:
        while open_reads:
            if over_time():
                return True, False, False
            left = deadline - time.monotonic()
            for key, _ in sel.select(timeout=min(max(left, 0.001), poll)):
                fd = key.fd
                if fd == in_fd:
                    try:
                        pos += os.write(fd, view[pos : pos + 65536])
                    except BlockingIOError:
                        continue
                    except OSError:  # the program closed its stdin: drop the rest
                        pos = len(view)
                    if pos >= len(view):
                        sel.unregister(fd)
                        proc.stdin.close()
                    continue
                try:
                    chunk = os.read(fd, 65536)
                except BlockingIOError:
                    continue
                if not chunk:
                    sel.unregister(fd)
                    open_reads -= 1
                    continue
                which = streams[fd]
                if on_line is not None and which == 1:
                    # line mode: nothing is kept; the cap applies to one line. A long line
                    # costs linear time (a flood without newlines must not cost quadratic)
                    if b"\n" in chunk:
                        *lines, rest = (b"".join(partial) + chunk).split(b"\n")
                        partial, partial_size = [rest], len(rest)
                        for line in lines:
                            if len(line) > limit:
                                return False, True, False
                            if on_line(line):
                                return False, False, True
                    else:
                        partial.append(chunk)
                        partial_size += len(chunk)
                    if partial_size > limit:
                        return False, True, False
                    continue
                room = limit - sizes[which]
                chunks[which].append(chunk[: max(room, 0)])
                sizes[which] += len(chunk)
                if sizes[which] > limit:
                    return False, True, False
        if proc.poll() is None:  # output closed; the program may still run (or wait)
            try:  # a pidfd is readable when the process ends: no polling
                sel.register(os.pidfd_open(proc.pid), selectors.EVENT_READ)
                nap = poll
            except (AttributeError, OSError):  # kernel before 5.3
                nap = 0.01
            while proc.poll() is None:
                if over_time():
                    return True, False, False
                sel.select(timeout=min(max(deadline - time.monotonic(), 0.001), nap))
        tail = b"".join(partial)
        if on_line is not None and tail and on_line(tail):
            return False, False, True
        return False, False, False
    finally:
        for key in list(sel.get_map().values()):
            if key.fd not in streams and key.fd != in_fd:
                os.close(key.fd)  # the pidfd
        sel.close()
        if not proc.stdin.closed:
            with contextlib.suppress(OSError):
                proc.stdin.close()


def _remove_run(cgroup: _RunCgroup | None, root: Path) -> None:
    if cgroup is not None:
        cgroup.remove()
    shutil.rmtree(root, ignore_errors=True)


def _kill_tree(proc: subprocess.Popen, cgroup: _RunCgroup | None, marker: str) -> None:
    """Nothing of the run survives: its process group, its cgroup, marked stragglers."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    if cgroup is not None:
        cgroup.kill()
    else:  # the cgroup holds every process of the run; without one, sweep for the marker
        _sweep_marked(marker)
    with contextlib.suppress(ProcessLookupError):
        proc.kill()
    proc.wait()
    for stream in (proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()


# ----------------------------------------------------------------------------- python


def _harness_source() -> str:
    from reflectioncoder.eval import _harness  # the file runs in the sandbox as a script

    return Path(_harness.__file__).read_text()


def wall_backstop(cpu_s: float) -> float:
    """The wall-clock limit that goes with a CPU-time limit: generous, so that a loaded machine
    (a run getting a fifth of a core) does not change a verdict; it stops programs that sleep or
    block."""
    return 5.0 * cpu_s + 10.0


def python_argv(script: str = "main.py") -> list[str]:
    """argv that runs ``{src}/script`` with this interpreter behind the harness's guards."""
    return [sys.executable, "-I", "-B", "{src}/harness.py", "--run", f"{{src}}/{script}"]


def python_env() -> dict[str, str]:
    """Environment for Python programs: the audit guard is on in the fallback level."""
    return {"RC_SANDBOX_STRICT": "0" if isolation_level().startswith("bwrap") else "1"}


def run_python(
    source: str, *, stdin: str = "", timeout_s: float = 5.0, memory_mb: int = 512
) -> ExecResult:
    """Run a whole Python program in the sandbox; what it printed comes back (capped).

    Tracebacks read as if the program ran as ``main.py``: real interpreter feedback.
    ``timeout_s`` counts CPU seconds of the whole run; a program that only waits is stopped by
    the wall clock at ``wall_backstop(timeout_s)``.
    """
    if not isinstance(source, str):
        raise TypeError(f"source must be str, got {type(source).__name__}")
    if timeout_s <= 0:
        raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
    return run_sandboxed(
        python_argv(),
        files={"main.py": source, "harness.py": _harness_source()},
        stdin=stdin,
        cpu_s=timeout_s,  # CPU time of the whole run: load on the machine changes nothing
        timeout_s=wall_backstop(timeout_s),
        memory_mb=memory_mb,
        env=python_env(),
        output_limit=64 << 10,
    )


# ----------------------------------------------------------------------------- what is not promised

_FALLBACK_GAPS = (
    "host files outside the hidden data and cache directories can be read",
    "memory is limited per process (RLIMIT_AS), not per sample",
    "files and /proc are guarded by a Python audit hook (sockets by the seccomp filter): "
    "native code (a C extension) can step around the hook",
)
_FALLBACK_NATIVE_GAPS = (
    "programs that are not Python (MultiPL-E compiled languages, shell) run as the caller "
    "(root: every root-owned file, sysctls and device nodes writable) with rlimits, a process "
    "group, the cgroup and the seccomp filter (no socket, mount, namespace, ptrace): no file "
    "or /proc guard",
)


@lru_cache(maxsize=1)
def seccomp_available() -> bool:
    """Whether the fallback's seccomp filter (new processes, ptrace, mounts...) can be
    installed here: a machine we have syscall tables for, and a kernel with seccomp."""
    from reflectioncoder.eval import _harness

    if _harness._seccomp_filter(os.uname().machine, 1) is None:
        return False
    try:
        return "Seccomp:" in Path("/proc/self/status").read_text()
    except OSError:
        return False


def not_guaranteed(level: str, python_only: bool = True) -> list[str]:
    """The properties the isolation ``level`` cannot promise (for Python programs only, or
    for programs in any language: MultiPL-E); the result file lists them, docs/evaluation.md
    has the table."""
    if not level.startswith("rlimits"):
        return []
    gaps = list(_FALLBACK_GAPS)
    if not python_only:
        gaps += _FALLBACK_NATIVE_GAPS
    elif not seccomp_available():
        gaps.append("new processes are refused from Python only (no seccomp here)")
    return gaps
