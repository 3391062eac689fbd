"""The fallback level's in-process guard for Python programs, shipped into the box as a file
(standard library only): its audit hook, installed after the stricter seccomp filter
(``syscall_filter``, shipped beside it; its names are re-exported here for the host's callers).
"""

from __future__ import annotations

if __package__:  # the scorer's side: the package
    from reflectioncoder.eval.sandbox.syscall_filter import (
        deny_processes_by_seccomp,
        install_seccomp,
        seccomp_filter,
    )
else:  # in the box: shipped beside this file as a top-level module
    from syscall_filter import (  # type: ignore[no-redef]
        deny_processes_by_seccomp,
        install_seccomp,
        seccomp_filter,
    )

__all__ = ["deny_processes_by_seccomp", "install_audit_guard", "install_seccomp", "seccomp_filter"]


def install_audit_guard(work_dir: str, hidden: list | tuple = ()) -> None:  # pragma: no cover
    """The fallback level's in-process guard, installed before any untrusted code runs.

    A seccomp filter (x86-64, aarch64) makes the kernel refuse every new process or program
    (fork, vfork, clone other than threads, execve), signals to other processes, ptrace and the
    other processes' memory, namespaces, mounts, device nodes and file handles; whatever calls
    them (``_posixsubprocess.fork_exec``, which has no audit event, ctypes, a C extension).
    An audit hook (which Python cannot remove) then refuses: writes, deletes, renames, links
    and mode changes outside ``work_dir``; reads under ``hidden`` (the data and the
    expected-output cache); anything under ``/proc/<pid>`` of another process; device files
    other than the harmless ones; descriptors of directories (so no ``dir_fd=`` call can start
    outside the working directory); path objects other than str and bytes (their ``__fspath__``
    could answer differently twice); sockets; new programs; ctypes; gc's object walks, tracing,
    and rewriting the guard's functions (its state is immutable: tuples, strings and built-in
    functions bound as defaults, so nothing it reads can be patched from Python)."""
    import os
    import posix
    import sys

    seccomp = deny_processes_by_seccomp()
    import _posixsubprocess  # no audit event: removed, and blocked by seccomp where it runs

    def refuse(*args, **kwargs):
        raise PermissionError("sandbox: new processes are not allowed")

    _posixsubprocess.fork_exec = refuse
    if "subprocess" in sys.modules:
        sys.modules["subprocess"]._fork_exec = refuse
    for name in ("fork", "forkpty", "posix_spawn", "posix_spawnp", "system", "pidfd_open"):
        for module in (os, posix):
            if hasattr(module, name):
                setattr(module, name, refuse)
    if not seccomp:  # a C extension could still start programs: the result says so
        sys.stderr.write("sandbox: seccomp unavailable, processes guarded from Python only\n")
    work = os.path.realpath(work_dir)
    hook = _make_audit_hook(work, tuple(os.path.realpath(h) for h in hidden), posix.getpid())
    sys.addaudithook(hook)


_WRITE_FLAGS = 0o1 | 0o2 | 0o100 | 0o1000 | 0o2000  # O_WRONLY O_RDWR O_CREAT O_TRUNC O_APPEND
_DIR_FLAGS = 0o200000 | 0o10000000  # O_DIRECTORY | O_PATH (x86-64 and aarch64 values differ:
_DIR_FLAGS_ARM = 0o40000 | 0o10000000  # O_DIRECTORY is 0o40000 on aarch64)
_SAFE_DEVICES = ("/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom")
_PATH_EVENTS = tuple(
    "os.remove os.rmdir os.rename os.truncate os.chmod os.chown os.link os.symlink os.mkdir "
    "shutil.rmtree shutil.move os.utime os.setxattr os.removexattr".split()
)
_DENIED_EVENTS = tuple(
    "os.exec os.posix_spawn os.spawn os.system subprocess.Popen os.fork os.forkpty pty.spawn "
    "os.startfile gc.get_objects gc.get_referrers gc.get_referents sys.settrace sys.setprofile "
    "socket.connect socket.bind socket.sendto socket.sendmsg".split()
)
_DENIED_IMPORTS = ("_posixsubprocess", "_ctypes", "ctypes", "_testcapi", "_testinternalcapi")


def _resolve(
    path,
    proc_pid: str,
    _type=type,
    _str=str,
    _bytes=bytes,
    _lstat=__import__("posix").lstat,
    _readlink=__import__("posix").readlink,
    _getcwd=__import__("posix").getcwd,
    _fsdecode=__import__("os").fsdecode,
    _perm=PermissionError,
    _oserror=OSError,
):
    """(real path, st_mode or 0) of ``path``, symlinks followed one component at a time (so
    ``/proc/<pid>/root`` and the like are checked before they are followed); raises
    PermissionError on another process's ``/proc`` entry. Depends only on its defaults (a
    tuple: the audit hook refuses to replace them)."""
    if _type(path) is _bytes:
        path = _fsdecode(path)
    if _type(path) is not _str:
        raise _perm("sandbox: only str and bytes paths")
    if not path.startswith("/"):
        path = _getcwd() + "/" + path
    todo = [p for p in path.split("/") if p][::-1]
    done: list = []
    mode, links = 0, 0
    while todo:
        part = todo.pop()
        if part == ".":
            continue
        if part == "..":
            if done:
                done.pop()
            continue
        if done == ["proc"] and part != proc_pid and part[:1].isdigit():
            raise _perm("sandbox: another process's /proc entry")
        candidate = "/" + "/".join([*done, part])
        try:
            mode = _lstat(candidate).st_mode
        except _oserror:
            mode = 0
            done.append(part)
            continue
        if mode & 0o170000 == 0o120000:  # a symlink
            links += 1
            if links > 40:
                raise _perm("sandbox: too many symlinks")
            target = _readlink(candidate)
            if target.startswith("/"):
                done = []
            todo.extend([p for p in target.split("/") if p][::-1])
            continue
        done.append(part)
    if not done:
        mode = _lstat("/").st_mode
    return "/" + "/".join(done), mode


def _make_audit_hook(work: str, hidden: tuple, pid: int):  # pragma: no cover - sandbox side
    """The audit hook; everything it uses is bound as an immutable default."""
    import os

    dir_flags = _DIR_FLAGS_ARM if os.uname().machine == "aarch64" else _DIR_FLAGS

    def hook(
        event,
        args,
        *,
        _work=work,
        _inside=work + "/",
        _devices=frozenset(_SAFE_DEVICES),
        _hidden=tuple(h + "/" for h in hidden),
        _pid=pid,
        _proc_pid=str(pid),
        _resolve=_resolve,
        _path_events=frozenset(_PATH_EVENTS),
        _two_paths=frozenset(("os.rename", "os.link", "os.symlink", "shutil.move")),
        _fd_events=frozenset(("os.chmod", "os.chown", "os.utime")),
        _denied=frozenset(_DENIED_EVENTS),
        _imports=frozenset(_DENIED_IMPORTS),
        _write_flags=_WRITE_FLAGS,
        _dir_flags=dir_flags,
        _readlink=__import__("posix").readlink,
        _type=type,
        _int=int,
        _str=str,
        _any=any,
        _perm=PermissionError,
        _import_error=ImportError,
    ):
        if event == "open" or event == "os.listdir" or event == "os.scandir":
            path = args[0] if args and args[0] is not None else "."
            if _type(path) is _int:  # a descriptor it holds already (no directory among them)
                return
            real, mode = _resolve(path, _proc_pid)
            if real.startswith(_hidden) or real + "/" in _hidden:
                raise _perm(f"sandbox: {real!r} is hidden")
            if event != "open":
                return
            flags, file_mode = args[2] or 0, args[1]
            writing = (
                _any(c in _str(file_mode) for c in "wax+")
                if file_mode is not None
                else bool(flags & _write_flags)
            )
            if writing and not (real.startswith(_inside) or real in _devices):
                raise _perm(f"sandbox: writing outside the working dir: {real!r}")
            if file_mode is None and (flags & _dir_flags or mode & 0o170000 == 0o040000):
                raise _perm("sandbox: no descriptors of directories (dir_fd)")
            if mode & 0o170000 in (0o020000, 0o060000) and real not in _devices:
                raise _perm(f"sandbox: device {real!r}")
        elif event in _path_events:
            paths = args[:2] if event in _two_paths else args[:1]
            if event == "os.symlink" and _type(paths[0]) is _str and paths[0][:1] != "/":
                # a relative target is relative to the link's own directory
                link_dir = _resolve(paths[1], _proc_pid)[0].rsplit("/", 1)[0]
                paths = (link_dir + "/" + paths[0], paths[1])
            for path in paths:
                if _type(path) is _int and event in _fd_events:
                    path = _readlink(f"/proc/self/fd/{path}")
                elif _type(path) is _int or path is None:
                    continue
                real = _resolve(path, _proc_pid)[0]
                if not (real.startswith(_inside) or real == _work):
                    raise _perm(f"sandbox: {event} outside the working dir: {real!r}")
        elif event in _denied or event.startswith("ctypes."):
            raise _perm(f"sandbox: {event} is not allowed")
        elif event == "import" and args[0] in _imports:
            raise _import_error(f"sandbox: importing {args[0]} is not allowed")
        elif event in ("os.kill", "os.killpg") and args[0] not in (0, _pid):
            raise _perm("sandbox: no signals to other processes")
        elif event == "object.__setattr__" and args[0] is _resolve:
            raise _perm("sandbox: rewriting the guard is not allowed")

    return hook
