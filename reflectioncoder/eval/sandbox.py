"""The one place that runs untrusted (model-written) code.

Every run gets its own process tree, its own temporary directory and hard limits; the verdict
about what it did is always taken outside of it. Isolation levels, strongest first:

- ``bwrap``: bubblewrap namespaces: own user, PID, network, IPC and UTS namespaces, the host file
  system read-only, a private size-capped ``/tmp`` (the working directory lives there), data and
  cache directories hidden. When the PID namespace's first process dies the kernel kills every
  process in it, so nothing outlives the run.
- ``rlimits`` (fallback where bubblewrap or user namespaces are missing): a new session and
  process group, resource limits, a private working directory as ``cwd`` and ``TMPDIR``, a sweep
  of ``/proc`` for processes tagged with the run's marker (children that called ``setsid``), and
  for Python programs an audit hook that refuses writes and deletes outside the working
  directory, network connections, signals to other processes and new programs. Weaker: native
  code (ctypes) can bypass the audit hook.

Both levels add a ``pids`` cgroup (the fork-bomb limit, and the list of processes to kill) when
the machine lets us create one, and rlimits on address space, CPU time, file size, open files,
core dumps and (for non-root users) processes. The wall-clock timeout kills from outside with
SIGKILL, which no program can ignore. Output is capped; a run that floods it is killed.

Force a level with ``REFLECTIONCODER_SANDBOX=bwrap|rlimits`` (``auto`` by default).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import resource
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

__all__ = ["ExecResult", "PreparedRun", "isolation_level", "run_python", "run_sandboxed"]

# Mount points inside the bwrap sandbox (both under the private /tmp).
_SRC_IN_BOX = "/tmp/src"
_WORK_IN_BOX = "/tmp/work"
_MARKER_ENV = "REFLECTIONCODER_SANDBOX_RUN"
_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class ExecResult:
    """What a sandboxed run printed and how it ended.

    ``exit_code`` is the process's status (negative: killed by that signal) or None when the
    sandbox killed it (timeout or output flood). Output beyond the cap is dropped and
    ``output_truncated`` is set; the run is then killed.
    """

    stdout: str
    stderr: str
    exit_code: int | None
    timed_out: bool
    output_truncated: bool
    duration_s: float
    isolation: str

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
    with tempfile.TemporaryDirectory(prefix="rc-probe-") as tmp:
        argv = _bwrap_argv(exe, Path(tmp), Path(tmp), hide=()) + ["/bin/true"]
        try:
            proc = subprocess.run(argv, capture_output=True, timeout=20)
        except (OSError, subprocess.TimeoutExpired):
            return False
    return proc.returncode == 0


@lru_cache(maxsize=1)
def _cgroup_root() -> Path | None:
    """A directory where we may create ``pids`` cgroups (v1 or v2), or None."""
    candidates = [Path("/sys/fs/cgroup/pids"), Path("/sys/fs/cgroup")]
    for root in candidates:
        if not (root / "cgroup.procs").exists():
            continue
        probe = root / f"rc-probe-{uuid.uuid4().hex[:8]}"
        try:
            probe.mkdir()
        except OSError:
            continue
        try:
            ok = (probe / "pids.max").exists()
            if ok:
                (probe / "pids.max").write_text("8")
        except OSError:
            ok = False
        finally:
            with contextlib.suppress(OSError):
                probe.rmdir()
        if ok:
            return root
    return None


def isolation_level() -> str:
    """The isolation runs get here: ``bwrap`` or ``rlimits``, plus ``+cgroup`` when available."""
    wanted = os.environ.get("REFLECTIONCODER_SANDBOX", "auto")
    if wanted not in ("auto", "bwrap", "rlimits"):
        raise ValueError(f"REFLECTIONCODER_SANDBOX must be auto, bwrap or rlimits, got {wanted!r}")
    if wanted == "bwrap" and not _bwrap_works():
        raise RuntimeError("REFLECTIONCODER_SANDBOX=bwrap but bubblewrap cannot run here")
    level = "bwrap" if wanted != "rlimits" and _bwrap_works() else "rlimits"
    return level + ("+cgroup" if _cgroup_root() is not None else "")


# ----------------------------------------------------------------------------- launch


def _paths_to_keep() -> list[str]:
    """Host paths under /tmp that programs need (a virtualenv there), re-bound after the
    private /tmp hides them."""
    keep = set()
    for p in (sys.prefix, sys.base_prefix, os.path.dirname(os.path.realpath(sys.executable))):
        if p.startswith("/tmp/") and os.path.isdir(p):
            keep.add(p)
    return sorted(keep)


def _bwrap_argv(
    exe: str, src: Path, work: Path, hide: Sequence[str], tmp_mb: int = 512
) -> list[str]:
    argv = [exe, "--unshare-all", "--die-with-parent", "--new-session"]
    argv += ["--ro-bind", "/", "/", "--proc", "/proc", "--dev", "/dev"]
    argv += ["--size", str(tmp_mb << 20), "--tmpfs", "/tmp"]
    for keep in _paths_to_keep():
        argv += ["--ro-bind", keep, keep]
    for path in map(os.path.abspath, hide):
        if os.path.isdir(path) and not path.startswith("/tmp/"):
            argv += ["--tmpfs", path]
    argv += ["--ro-bind", str(src), _SRC_IN_BOX, "--dir", _WORK_IN_BOX, "--chdir", _WORK_IN_BOX]
    argv += ["--setenv", "TMPDIR", "/tmp", "--setenv", "HOME", _WORK_IN_BOX, "--"]
    return argv


def _make_cgroup(max_processes: int) -> Path | None:
    root = _cgroup_root()
    if root is None:
        return None
    path = root / f"rc-sandbox-{uuid.uuid4().hex}"
    try:
        path.mkdir()
        (path / "pids.max").write_text(str(max_processes))
    except OSError:
        with contextlib.suppress(OSError):
            path.rmdir()
        return None
    return path


def _preexec(
    memory_mb: int, cpu_s: int, file_size_mb: int, open_files: int, max_processes: int, cgroup: str
):
    """Runs in the child between fork and exec: enter the cgroup, die with the parent, limits."""
    libc = ctypes.CDLL(None, use_errno=True)
    prctl = libc.prctl

    def apply() -> None:
        if cgroup:
            with open(os.path.join(cgroup, "cgroup.procs"), "w") as f:
                f.write("0")
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        mem = memory_mb << 20
        resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
        resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s + 1))
        resource.setrlimit(resource.RLIMIT_FSIZE, (file_size_mb << 20, file_size_mb << 20))
        resource.setrlimit(resource.RLIMIT_NOFILE, (open_files, open_files))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        if os.geteuid() != 0:  # root ignores RLIMIT_NPROC; the cgroup covers that case
            # the limit counts ALL of this user's processes and threads, hence the headroom
            nproc = max_processes + 1024
            resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))

    return apply


def _kill_cgroup(cgroup: Path) -> None:
    """SIGKILL every process of the cgroup until it is empty, then remove it."""
    for _ in range(200):
        try:
            pids = [int(p) for p in (cgroup / "cgroup.procs").read_text().split()]
        except OSError:
            break
        if not pids:
            break
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.005)
    for _ in range(100):
        try:
            cgroup.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.01)


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


class PreparedRun:
    """A sandboxed process started ahead of its input (bwrap, interpreter start-up and imports
    happen while the caller does other work), used for exactly ONE run: ``run`` feeds stdin,
    collects, kills the tree and cleans up; ``discard`` does the last two without running.
    Isolation per run is the same as ``run_sandboxed``'s."""

    def __init__(
        self,
        argv: Sequence[str],
        *,
        files: Mapping[str, str | bytes] | None = None,
        memory_mb: int = 512,
        cpu_s: int = 6,
        max_processes: int = 64,
        file_size_mb: int = 64,
        open_files: int = 256,
        tmp_mb: int = 512,
        env: Mapping[str, str] | None = None,
        hide: Sequence[str] = (),
    ) -> None:
        if memory_mb <= 0:
            raise ValueError(f"memory_mb must be > 0, got {memory_mb}")
        self.level = isolation_level()
        self.root: Path | None = Path(tempfile.mkdtemp(prefix="rc-sandbox-"))
        self.cgroup: Path | None = None
        self.proc: subprocess.Popen | None = None
        self.used = False
        try:
            self._start(
                argv,
                files,
                memory_mb,
                cpu_s,
                max_processes,
                file_size_mb,
                open_files,
                tmp_mb,
                env,
                hide,
            )
        except BaseException:
            self.discard()
            raise

    def _start(
        self,
        argv,
        files,
        memory_mb,
        cpu_s,
        max_processes,
        file_size_mb,
        open_files,
        tmp_mb,
        env,
        hide,
    ) -> None:
        assert self.root is not None
        src, work = self.root / "src", self.root / "work"
        src.mkdir()
        work.mkdir()
        for name, content in (files or {}).items():
            if "/" in name or name.startswith("."):
                raise ValueError(f"files: {name!r} must be a plain file name")
            data = content.encode() if isinstance(content, str) else content
            (src / name).write_bytes(data)
        use_bwrap = self.level.startswith("bwrap")
        box_src, box_work = (_SRC_IN_BOX, _WORK_IN_BOX) if use_bwrap else (str(src), str(work))
        cmd = [a.replace("{src}", box_src).replace("{work}", box_work) for a in argv]
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
        if use_bwrap:
            cmd = _bwrap_argv(_bwrap_path() or "bwrap", src, work, hide, tmp_mb) + cmd
        self.cgroup = _make_cgroup(max_processes)
        self.proc = subprocess.Popen(
            cmd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=str(work),
            env=child_env,
            start_new_session=True,
            close_fds=True,
            preexec_fn=_preexec(
                memory_mb, cpu_s, file_size_mb, open_files, max_processes, str(self.cgroup or "")
            ),
        )

    def run(
        self,
        stdin: str | bytes = b"",
        *,
        timeout_s: float = 5.0,
        output_limit: int = 1 << 20,
        on_stdout_line: Callable[[bytes], bool] | None = None,
    ) -> ExecResult:
        """Feed ``stdin`` and wait (wall clock from now); see ``run_sandboxed``."""
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        if self.used or self.proc is None:
            raise RuntimeError("a PreparedRun runs once")
        self.used = True
        data_in = stdin.encode() if isinstance(stdin, str) else stdin
        out_chunks: dict[int, list[bytes]] = {1: [], 2: []}
        sizes = {1: 0, 2: 0}
        start = time.monotonic()
        try:
            timed_out, truncated, stopped = _pump(
                self.proc,
                data_in,
                start + timeout_s,
                output_limit,
                out_chunks,
                sizes,
                on_stdout_line,
            )
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
        )

    def discard(self) -> None:
        """Kill whatever runs and remove the run's directory and cgroup (idempotent)."""
        self.used = True
        if self.root is None:
            return
        try:
            if self.proc is not None:
                _kill_tree(self.proc, self.cgroup, self.marker)
        finally:
            if self.cgroup is not None:
                _kill_cgroup(self.cgroup)
                self.cgroup = None
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None


def run_sandboxed(
    argv: Sequence[str],
    *,
    files: Mapping[str, str | bytes] | None = None,
    stdin: str | bytes = b"",
    timeout_s: float = 5.0,
    memory_mb: int = 512,
    cpu_s: int | None = None,
    max_processes: int = 64,
    file_size_mb: int = 64,
    open_files: int = 256,
    tmp_mb: int = 512,
    output_limit: int = 1 << 20,
    env: Mapping[str, str] | None = None,
    hide: Sequence[str] = (),
    on_stdout_line: Callable[[bytes], bool] | None = None,
) -> ExecResult:
    """Run ``argv`` in the sandbox and return what it printed.

    ``files`` are written, read-only to the program, into a source directory; ``{src}`` and
    ``{work}`` in ``argv`` are replaced by that directory and the writable working directory
    (the program's cwd). ``hide`` lists host directories the program must not see (bwrap only).
    ``output_limit`` caps stdout and stderr each, in bytes. ``on_stdout_line`` sees each line
    of stdout as it arrives (a trusted caller judging results while the run goes on); when it
    returns True the run is stopped there and killed (``exit_code`` None); stdout is then not
    kept, and ``output_limit`` caps each line instead.
    """
    if timeout_s <= 0:
        raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
    prepared = PreparedRun(
        argv,
        files=files,
        memory_mb=memory_mb,
        cpu_s=int(cpu_s if cpu_s is not None else max(1, int(timeout_s) + 1)),
        max_processes=max_processes,
        file_size_mb=file_size_mb,
        open_files=open_files,
        tmp_mb=tmp_mb,
        env=env,
        hide=hide,
    )
    return prepared.run(
        stdin, timeout_s=timeout_s, output_limit=output_limit, on_stdout_line=on_stdout_line
    )


def _pump(
    proc: subprocess.Popen,
    data_in: bytes,
    deadline: float,
    limit: int,
    chunks: dict[int, list[bytes]],
    sizes: dict[int, int],
    on_line: Callable[[bytes], bool] | None,
) -> tuple[bool, bool, bool]:
    """Feed stdin and collect stdout/stderr until the process exits, the deadline passes, the
    output exceeds ``limit`` or ``on_line`` says stop. Returns (timed_out, truncated, stopped)."""
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
    pending = b""
    try:
        while open_reads:
            left = deadline - time.monotonic()
            if left <= 0:
                return True, False, False
            for key, _ in sel.select(timeout=min(left, 0.5)):
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
                    # line mode: nothing is kept; the cap applies to one line
                    pending += chunk
                    *lines, pending = pending.split(b"\n")
                    for line in lines:
                        if len(line) > limit:
                            return False, True, False
                        if on_line(line):
                            return False, False, True
                    if len(pending) > limit:
                        return False, True, False
                    continue
                room = limit - sizes[which]
                chunks[which].append(chunk[: max(room, 0)])
                sizes[which] += len(chunk)
                if sizes[which] > limit:
                    return False, True, False
        left = deadline - time.monotonic()
        try:
            proc.wait(timeout=max(left, 0.001))
        except subprocess.TimeoutExpired:
            return True, False, False
        if on_line is not None and pending and on_line(pending):
            return False, False, True
        return False, False, False
    finally:
        sel.close()
        if not proc.stdin.closed:
            with contextlib.suppress(OSError):
                proc.stdin.close()


def _kill_tree(proc: subprocess.Popen, cgroup: Path | None, marker: str) -> None:
    """Nothing of the run survives: its process group, its cgroup, marked stragglers."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    if cgroup is not None:
        _kill_cgroup(cgroup)
    if cgroup is None:  # the cgroup already holds every process of the run
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
    """
    if not isinstance(source, str):
        raise TypeError(f"source must be str, got {type(source).__name__}")
    return run_sandboxed(
        python_argv(),
        files={"main.py": source, "harness.py": _harness_source()},
        stdin=stdin,
        timeout_s=timeout_s,
        memory_mb=memory_mb,
        env=python_env(),
        output_limit=64 << 10,
    )


# ----------------------------------------------------------------------------- what is not promised

_FALLBACK_GAPS = (
    "host files outside the hidden data and cache directories can be read",
    "memory is limited per process (RLIMIT_AS), not per sample",
    "files, network and /proc are guarded by a Python audit hook: native code (a C extension) "
    "can step around it",
)
_FALLBACK_NATIVE_GAPS = (
    "programs that are not Python (MultiPL-E compiled languages, shell) get rlimits, a process "
    "group and the pids cgroup only: no file, network, /proc or new-process guard",
)


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


def not_guaranteed(level: str, language: str = "python") -> list[str]:
    """The properties the isolation ``level`` cannot promise for programs in ``language`` (the
    result file lists them; docs/evaluation.md has the table)."""
    if not level.startswith("rlimits"):
        return []
    gaps = list(_FALLBACK_GAPS)
    if language != "python":
        gaps += _FALLBACK_NATIVE_GAPS
    elif not seccomp_available():
        gaps.append("new processes are refused from Python only (no seccomp here)")
    return gaps
