"""Starting a sandboxed process and running it: the run's directory, the command (bwrap's, or
the fallback's), the child's set-up between fork and exec (cgroup, rlimits, seccomp), the I/O
(``pump``), and the kill of the whole tree at the verdict (``teardown``).

``PreparedRun`` starts the process ahead of its input; ``run_sandboxed`` starts and runs one.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from reflectioncoder.eval.sandbox import (
    bwrap,
    child,
    commitguard,
    filetable,
    landlock,
    runuser,
    searchgrant,
    spawn,
    syscall_filter,
)
from reflectioncoder.eval.sandbox.admission import admission
from reflectioncoder.eval.sandbox.cgroup import RunCgroup, make_cgroup
from reflectioncoder.eval.sandbox.cpuwait import IdleWindow
from reflectioncoder.eval.sandbox.diskguard import fallback_guard
from reflectioncoder.eval.sandbox.probe import isolation
from reflectioncoder.eval.sandbox.pump import IdleRule, Pump
from reflectioncoder.eval.sandbox.records import (
    DEFAULT_CPU_S,
    Ending,
    ExecResult,
    Limits,
)
from reflectioncoder.eval.sandbox.teardown import kill_all, kill_tree, remove_run

__all__ = ["PreparedRun", "run_sandboxed"]


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
        limits: Limits | None = None,
        env: Mapping[str, str] | None = None,
        hide: Sequence[str] = (),
        ro_binds: Sequence[str] = (),
        pass_fds: Sequence[int] = (),
        admit_now: bool = False,
        **limit: float,
    ) -> None:
        limits = dataclasses.replace(limits or Limits(), **limit)
        for path in ro_binds:
            if not os.path.exists(path):
                raise ValueError(f"ro_binds: {path!r} does not exist")
        self.isolation = isolation()
        self.level = self.isolation.name
        self.cpu_s = limits.cpu_s if limits.cpu_s is not None else DEFAULT_CPU_S
        self.tmp_mb = limits.tmp_mb
        self.root: Path | None = Path(tempfile.mkdtemp(prefix="rc-sandbox-"))
        self.cgroup: RunCgroup | None = None
        self.proc: subprocess.Popen | None = None
        self.run_uid: int | None = None
        self.used = False
        self.memory, self.held = limits.memory_mb << 20, 0  # ``admission``: while code may run
        try:
            if admit_now:
                self.held = admission().take(self.memory)
            self._start(argv, files, limits, env, hide, ro_binds, pass_fds)
        except BaseException:
            self.discard()
            raise

    def _start(self, argv, files, limits: Limits, env, hide, ro_binds, pass_fds) -> None:
        assert self.root is not None
        src, work = self.root / "src", self.root / "work"
        src.mkdir(mode=0o755)
        work.mkdir()
        src.chmod(0o755)  # read by the box's unprivileged uid, whatever the umask
        spawn.write_files(src, files or {})
        use_bwrap = self.isolation.bwrap
        user = self._run_user(argv, src, work, ro_binds, pass_fds)
        self.run_uid = user[0]
        box_src, box_work = (
            (bwrap.SRC_IN_BOX, bwrap.WORK_IN_BOX) if use_bwrap else (str(src), str(work))
        )
        cmd = [a.replace("{src}", box_src).replace("{work}", box_work) for a in argv]
        if use_bwrap and os.path.isabs(cmd[0]):  # "venv/../bin/python": only "bin" is mounted
            cmd[0] = os.path.normpath(cmd[0])
        self.marker = uuid.uuid4().hex
        tmp = "/tmp" if use_bwrap else box_work
        child_env = spawn.child_env(box_work, tmp, self.marker, env, bwrap.box_path(ro_binds))
        seccomp_fd = bwrap.box_seccomp_fd() if use_bwrap else None
        # the fallback installs the box's filter itself, between fork and exec
        seccomp = None if use_bwrap else syscall_filter.seccomp_filter(os.uname().machine, None)
        fds = [fd for fd in (seccomp_fd, *pass_fds) if fd is not None]
        try:
            if use_bwrap:
                exe = bwrap.bwrap_path() or "bwrap"
                box = bwrap.bwrap_argv(exe, src, hide, ro_binds, limits.tmp_mb, seccomp_fd, user[0])
                cmd = box + cmd
            self.cgroup = make_cgroup(self.isolation.cgroup, limits, self.isolation.device_cgroup)
            procs = self.cgroup.procs_files() if self.cgroup else []
            files = None
            if self.isolation.landlock:  # the fallback: bubblewrap's file system, by Landlock
                files = (
                    [*bwrap.readable_paths(ro_binds), str(src)],
                    [str(work), *landlock.DEVICES],
                )
            config = spawn.child_config(
                limits, self.cpu_s, procs, seccomp, user, not use_bwrap, files
            )
            preexec = None
            if spawn.big_scorer():  # vfork + exec of a fresh interpreter that sets up, then execs
                cmd = [
                    sys.executable,
                    "-I",
                    "-S",
                    "-B",
                    spawn.CHILD_SCRIPT,
                    *child.to_argv(config),
                    "--",
                ] + cmd
            else:
                preexec = spawn.preexec(config)
            with spawn.ctrl_c_held():  # until the child is in its own session (child.apply)
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
                    preexec_fn=preexec,
                )
        finally:
            if seccomp_fd is not None:
                os.close(seccomp_fd)

    def _run_user(self, argv, src: Path, work: Path, ro_binds, pass_fds) -> tuple:
        """(uid, keep CAP_DAC_READ_SEARCH, supplementary group) of the program. Started by
        root, a uid of the run's own (``runuser``): bwrap's setpriv drops to it, or (the
        fallback) ``child.drop_root``; root hands it the passed pipes (reopened through
        ``/dev/fd/N``, a pipe checks its owner). None: bwrap's 65534 in its user namespace, or
        the fallback's caller. The group: ``searchgrant``'s, where a toolchain lies under a
        folder only root may search (the capability only where no ACL can be set)."""
        if os.geteuid() != 0:
            return None, False, None
        uid = runuser.new_run_uid()
        for fd in pass_fds:
            if stat.S_ISFIFO(os.fstat(fd).st_mode):
                os.fchown(fd, uid, uid)
        if self.isolation.bwrap:
            return uid, False, None
        assert self.root is not None
        runuser.own_run_dirs(self.root, src, work, uid)
        if not self.isolation.landlock:  # the first search before any run's clock starts
            runuser.world_writable_folders()
        needed = [shutil.which(argv[0]) or argv[0], *ro_binds]
        if any(sys.executable in arg for arg in argv):  # our interpreter, its site-packages
            needed += bwrap.python_paths()
        if not runuser.needs_read_all(needed):
            return uid, False, None
        if searchgrant.grant_search(needed):  # round 10: the capability read every file
            return uid, False, searchgrant.RUNS_GID
        return uid, True, None

    def cpu_time_s(self) -> float | None:
        """CPU seconds the run's whole process tree has used since it started (None where no
        cgroup counts it)."""
        return self.cgroup.cpu_time_s() if self.cgroup is not None else None

    def idle_window(self) -> IdleWindow | None:
        """What tells this run idle from starved of CPU (``cpuwait``; None without a cgroup)."""
        return IdleWindow(self.cpu_time_s, self.cgroup.pids) if self.cgroup is not None else None

    def run(
        self,
        stdin: str | bytes = b"",
        *,
        timeout_s: float = 5.0,
        cpu_s: float | None = None,
        output_limit: int = 1 << 20,
        on_stdout_line: Callable[[bytes], bool | bytes] | None = None,
        watchdog: Callable[[], bool] | None = None,
    ) -> ExecResult:
        """Feed ``stdin`` and wait: at most ``cpu_s`` CPU seconds of the whole tree from now
        (the constructor's by default) and ``timeout_s`` of wall clock; see ``run_sandboxed``.
        ``watchdog``: asked every 50 ms, after reading what the pipes held; True stops the run as
        ``on_stdout_line`` does (a judge whose verdict needs no line: a stalled program).
        Without one, a run that waits instead of computing is timed out on the wall clock
        long before ``timeout_s`` (``IdleRule``)."""
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        if self.used or self.proc is None:
            raise RuntimeError("a PreparedRun runs once")
        self.used = True
        self.held = self.held or admission().take(self.memory)
        data_in = stdin.encode() if isinstance(stdin, str) else stdin
        out_chunks: dict[int, list[bytes]] = {1: [], 2: []}
        sizes = {1: 0, 2: 0}
        start = time.monotonic()
        cpu0 = self.cpu_time_s()
        cpu_deadline = None if cpu0 is None else cpu0 + (cpu_s or self.cpu_s)
        cpu_used = cpu_now = None
        oom_kills = 0
        idle = None
        if watchdog is None and cpu0 is not None:
            idle = IdleRule(start, cpu0, cpu_s or self.cpu_s, self.cpu_time_s, self.idle_window())
        disk, watch, on_exit = self._fallback_watch(watchdog or idle)
        files = filetable.run_guard(self)  # its share of the machine's open files, any level
        commit = commitguard.run_guard(self, files.pids)  # strict overcommit: its memory limit
        watch = commit.watching(files.watching(watch))
        try:
            stop = Pump(
                self.proc,
                data_in,
                (start + timeout_s, cpu_deadline, self.cpu_time_s),
                output_limit,
                out_chunks,
                sizes,
                on_stdout_line,
                watch,
                on_exit,
            ).run()
            if idle is not None and idle.fired:
                stop = "wall"  # it waited: a time limit on the wall clock, reached early
            if disk is not None and disk.fired:
                stop = "disk"
            if files.fired:
                stop = "files"
            if commit.fired:
                stop = "commit"
            cpu_now = self.cpu_time_s()
            cpu_used = None if cpu0 is None or cpu_now is None else cpu_now - cpu0
            oom_kills = self.cgroup.oom_kills() if self.cgroup is not None else 0
        finally:
            files.close()
            self.discard()
        status = self.proc.returncode
        return ExecResult(
            stdout=b"".join(out_chunks[1]).decode("utf-8", "replace"),
            stderr=b"".join(out_chunks[2]).decode("utf-8", "replace"),
            exit_code=None if stop else status,
            timed_out=stop in ("wall", "cpu"),
            output_truncated=stop == "output",
            duration_s=time.monotonic() - start,
            isolation=self.level,
            cpu_time_s=cpu_used,
            ending=self._ending(stop, status, oom_kills, cpu_now),
        )

    def _fallback_watch(self, judge: Callable[[], bool] | None) -> tuple:
        """At the fallback level (no box): the host's disk bound around ``judge``, and the run
        ended with its main process as a box's PID namespace ends it (a child left holding the
        pipes escaped timeout's limit). Returns (the disk guard, the watchdog, on_exit)."""
        if self.isolation.bwrap:
            return None, judge, None
        disk, proc, cgroup = fallback_guard(self), self.proc, self.cgroup
        watch = disk.watching(judge) if disk is not None else judge
        return disk, watch, lambda: kill_all(proc, cgroup, self.marker, self.run_uid)

    def _ending(self, stop: str | None, status: int, oom_kills: int, cpu: float | None) -> Ending:
        """How the run ended, from the sandbox's evidence: its own stop, the status, the
        cgroup's OOM kills and CPU clock (a SIGXCPU, or a SIGKILL past the hard RLIMIT_CPU, is
        the per-process CPU limit: a time limit, not a crash)."""
        if stop in ("wall", "cpu"):
            return Ending("timeout", clock=stop)
        if stop is not None:
            return Ending(stop)
        # bwrap (like a shell) reports a program killed by signal N as status 128 + N
        sig = -status if status < 0 else None
        if self.isolation.bwrap and 128 < status < 128 + 65:
            sig = status - 128
        if sig is None:
            return Ending("exit", status)
        hard_cpu = int(self.cpu_s) + 2  # child.apply's hard RLIMIT_CPU
        if sig == signal.SIGXCPU or (
            sig == signal.SIGKILL and cpu is not None and cpu >= hard_cpu - 0.05
        ):
            return Ending("timeout", clock="cpu")
        if sig == signal.SIGKILL and oom_kills:
            return Ending("memory")
        return Ending("signal", sig)

    def discard(self) -> None:
        """Kill whatever runs and remove the run's directory and cgroup (idempotent)."""
        self.used = True
        if self.root is None:
            return
        root, cgroup, self.root, self.cgroup = self.root, self.cgroup, None, None
        try:
            if self.proc is not None:
                # every process is gone on return
                kill_tree(self.proc, cgroup, self.marker, self.run_uid)
        finally:
            held, self.held = self.held, 0
            admission().give(held)  # its processes are gone, its box's tmpfs with them
            # removing the empty cgroup (tens of ms in v1) and the run's files: off the path of
            # the next verdict; not a daemon thread, so the interpreter waits for it at exit
            # the fallback: the IPC objects the run's own uid made (no IPC namespace ends with
            # the run) and, without Landlock, what it left in world-writable folders
            uid = None if self.isolation.bwrap else self.run_uid
            files = not self.isolation.landlock
            args = (cgroup, root, uid, files, self.run_uid)
            threading.Thread(target=remove_run, args=args).start()


def run_sandboxed(
    argv: Sequence[str],
    *,
    files: Mapping[str, str | bytes] | None = None,
    stdin: str | bytes = b"",
    timeout_s: float = 5.0,
    limits: Limits | None = None,
    output_limit: int = 1 << 20,
    env: Mapping[str, str] | None = None,
    hide: Sequence[str] = (),
    ro_binds: Sequence[str] = (),
    on_stdout_line: Callable[[bytes], bool | bytes] | None = None,
    pass_fds: Sequence[int] = (),
    **limit: float,
) -> ExecResult:
    """Run ``argv`` in the sandbox and return what it printed.

    ``files`` are written, read-only to the program, into a source directory; ``{src}`` and
    ``{work}`` in ``argv`` are replaced by that directory and the writable working directory
    (the program's cwd). ``limits`` (or its fields as keywords: ``memory_mb=...``) cover the
    whole process tree (see ``Limits``); ``cpu_s`` defaults to ``timeout_s``, the wall-clock
    backstop for programs that wait. ``hide`` lists host directories the program must not see;
    ``ro_binds`` host paths a toolchain needs (bwrap binds nothing else but the system's and
    Python's directories). ``output_limit`` caps stdout and stderr each, in bytes.
    ``on_stdout_line`` sees each line of stdout as it arrives (a trusted caller judging results
    while the run goes on); when it returns True the run is stopped there and killed
    (``exit_code`` None), when it returns bytes they are fed to the program's stdin (which
    then stays open); stdout is then not kept, and ``output_limit`` caps each line instead.
    ``pass_fds``: descriptors the program inherits (the caller's numbers).
    """
    if timeout_s <= 0:
        raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
    limits = dataclasses.replace(limits or Limits(), **limit)
    if limits.cpu_s is None:
        limits = dataclasses.replace(limits, cpu_s=timeout_s)
    where = {"files": files, "env": env, "hide": hide, "ro_binds": ro_binds}
    prepared = PreparedRun(argv, limits=limits, pass_fds=pass_fds, admit_now=True, **where)
    return prepared.run(
        stdin, timeout_s=timeout_s, output_limit=output_limit, on_stdout_line=on_stdout_line
    )
