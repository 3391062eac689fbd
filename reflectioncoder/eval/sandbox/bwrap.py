"""The bubblewrap level: the namespaces, the minimal read-only file system and the drop to an
unprivileged host uid, as one bwrap command line.

Started by root, bwrap makes no user namespace (its uid 65534 would be host root): it mounts as
root, then ``setpriv`` drops the program to a host uid/gid of the run's own (``runuser``) with
no capability at all.
Started by another user, the user namespace maps 65534 to that unprivileged user. The file
system holds only what a program needs, read-only (``/usr`` and the library dirs, a few
``/etc`` files, the Python installation and site-packages, the toolchain binds), a private
size-capped ``/tmp`` (the working directory lives there), ``/dev/shm`` and ``/dev``;
``/proc/sys``, ``/proc/pressure`` and ``/dev/pts`` (terminals) are absent.
"""

from __future__ import annotations

import functools
import glob
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

from reflectioncoder.eval.sandbox import syscall_filter

__all__ = [
    "SANDBOX_UID",
    "SRC_IN_BOX",
    "WORK_IN_BOX",
    "bwrap_argv",
    "bwrap_path",
    "python_paths",
    "readable_paths",
    "box_seccomp_fd",
    "box_path",
    "setpriv_path",
    "toolchain_binds",
]

# Mount points inside the box (both under the private /tmp).
SRC_IN_BOX = "/tmp/src"
WORK_IN_BOX = "/tmp/work"
# "nobody": the uid and gid programs have inside bwrap started by a user that is not root
SANDBOX_UID = 65534
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
# What the box finds empty (read-only): /proc's files that write to the kernel beyond the
# process's own entries, sysctls (bwrap leaves /proc/sys writable when started by root) and
# pressure triggers; and /dev/pts, whose terminals (no program scored needs one) count
# against the machine's kernel.pty.max: a sample held them all (3072) but the host's reserve
_COVERED = ("/proc/sys", "/proc/pressure", "/dev/pts")
_DROP_CAPS = ("CAP_SETUID", "CAP_SETGID", "CAP_SETPCAP")
# The box's PATH: the system's program directories, whatever the host's PATH holds
SYSTEM_PATH = ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin")


@functools.lru_cache(maxsize=1)
def bwrap_path() -> str | None:
    return shutil.which("bwrap")


# What the interpreter reads of each prefix (a venv's, the base install's): never the prefix
# itself, where pip keeps its site config (``pip.conf``: an index URL with a token) and a
# user anything else (round 8: every box, of every language, read a venv's ``pip.conf``)
_PREFIX_PARTS = ("bin", "lib", "lib64", "pyvenv.cfg")


def python_paths() -> list[str]:
    """The interpreter, its standard library and the site-packages programs import from."""
    paths = {os.path.dirname(os.path.realpath(sys.executable))}
    for prefix in {sys.prefix, sys.base_prefix, sys.exec_prefix}:
        paths.update(os.path.join(prefix, part) for part in _PREFIX_PARTS)
    paths.update(p for p in sys.path if "-packages" in p)  # site dirs, .pth-added ones too
    return sorted(p for p in paths if os.path.exists(p))


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


def box_path(ro_binds: Sequence[str]) -> str:
    """The run's PATH: the host PATH's directories that lie inside a bound toolchain path
    (their order kept: ``~/.cargo/bin`` before ``/usr/bin``), then the system's; nothing else
    of the host's (a home's ``bin``, a project's venv) reaches the box."""
    binds = [os.path.abspath(b) for b in ro_binds]
    host = os.environ.get("PATH", "").split(os.pathsep)
    tools = [d for d in host if os.path.isabs(d) and any(_inside(d, b) for b in binds)]
    return os.pathsep.join(dict.fromkeys([*tools, *SYSTEM_PATH]))


def _ancestors(path: str) -> list[str]:
    """``/a/b/c`` -> ``["/a", "/a/b", "/a/b/c"]``."""
    parts = [p for p in path.split("/") if p]
    return ["/" + "/".join(parts[: i + 1]) for i in range(len(parts))]


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def bwrap_argv(
    exe: str,
    src: Path,
    hide: Sequence[str],
    ro_binds: Sequence[str],
    tmp_mb: int = 512,
    seccomp_fd: int | None = None,
    run_uid: int | None = None,
) -> list[str]:
    """Namespaces, no privileges, and a file system of only what programs need (read-only).

    Started by root, bwrap makes no user namespace (its uid 65534 would be host root): it
    mounts as root, then ``setpriv`` drops the program to host uid/gid ``run_uid`` with no
    capability at all, so every root-owned host file (``/proc/sys``, the bound device nodes)
    stays out of its reach. Started by another user, the user namespace maps 65534 to that
    unprivileged user. ``seccomp_fd``: a descriptor holding ``syscall_filter``'s box filter.
    ``run_uid`` (root only): the host uid/gid setpriv drops to, the run's own (``runuser``):
    a uid shared by every box would share the kernel's per-user counts (inotify instances,
    message queue bytes), so one sample could use up a sibling's."""
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
    for path in _COVERED:  # kernel settings, triggers, terminals: absent (empty, read-only)
        argv += ["--perms", "0555", "--tmpfs", path, "--remount-ro", path]
    for mount in ("/tmp", "/dev/shm"):
        argv += ["--perms", "1777", "--size", str(tmp_mb << 20), "--tmpfs", mount]
    system, host_paths = _host_layout()
    argv += system
    bound = list(_SYSTEM_PATHS)
    binds = []
    for path in [*host_paths, *map(os.path.abspath, ro_binds)]:
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
    argv += ["--ro-bind", str(src), SRC_IN_BOX, "--perms", "0777", "--dir", WORK_IN_BOX]
    argv += ["--chdir", WORK_IN_BOX, "--remount-ro", "/"]  # the box's root: nothing new on top
    argv += ["--setenv", "TMPDIR", "/tmp", "--setenv", "HOME", WORK_IN_BOX, "--"]
    if as_root:
        host = str(run_uid if run_uid is not None else SANDBOX_UID)
        argv += [setpriv_path(), f"--reuid={host}", f"--regid={host}", "--clear-groups"]
        argv += ["--inh-caps=-all", "--bounding-set=-all", "--no-new-privs", "--"]
    return argv


def readable_paths(ro_binds: Sequence[str]) -> list[str]:
    """What a box may read, as host paths: the system's directories, the ``/etc`` files,
    Python's, ``ro_binds`` and ``/proc`` (the fallback's Landlock rules: the same file system
    as bubblewrap's, the run's own folders aside)."""
    return [*_SYSTEM_PATHS, *_host_layout()[1], *map(os.path.abspath, ro_binds), "/proc"]


@functools.lru_cache(maxsize=1)
def _host_layout() -> tuple[list[str], list[str]]:
    """The system directories' mounts and the /etc and Python paths every box binds: read
    once per process (globbing /etc and stat-ing each path cost a millisecond per run)."""
    system = []
    for path in _SYSTEM_PATHS:
        if os.path.islink(path):
            system += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            system += ["--ro-bind", path, path]
    etc = sorted({p for pat in _ETC_PATTERNS for p in glob.glob(os.path.join("/etc", pat))})
    return system, [*etc, *python_paths()]


@functools.lru_cache(maxsize=1)
def setpriv_path() -> str:
    return shutil.which("setpriv", path="/usr/bin:/bin") or "/usr/bin/setpriv"


def box_seccomp_fd() -> int | None:
    """A descriptor (a memfd at offset 0) holding the box's seccomp program, for bwrap's
    ``--seccomp``; None on a machine we have no syscall table for."""
    code = syscall_filter.seccomp_filter(os.uname().machine, None)
    if code is None:
        return None
    fd = os.memfd_create("rc-seccomp", 0)
    os.write(fd, code)
    os.lseek(fd, 0, os.SEEK_SET)
    return fd
