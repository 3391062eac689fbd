"""The sandbox's public records: the limits a run gets, and what it printed and how it ended."""

from __future__ import annotations

import signal
from dataclasses import dataclass

__all__ = ["DEFAULT_CPU_S", "IDLE_SHARE", "Ending", "ExecResult", "Limits"]

DEFAULT_CPU_S = 6.0  # a started-ahead run's CPU seconds, unless told (its run may change it)
# A run (or a scorer's step) that used less than this share of its wall time in CPU is
# waiting, not computing: a loaded machine gives a run more (``wall_backstop`` assumes a fifth
# of a core)
IDLE_SHARE = 0.1


@dataclass(frozen=True)
class Limits:
    """One run's limits, over its whole process tree (not per process).

    ``memory_mb``: all processes together, ``/tmp`` and ``/dev/shm`` files included (cgroup
    memory limit; RLIMIT_AS per process as well). ``cpu_s``: CPU seconds of the run's cgroup
    (load on the machine does not change it; RLIMIT_CPU per process as a backstop); None: the
    run's wall-clock limit (``run_sandboxed``) or ``DEFAULT_CPU_S`` (``PreparedRun``).
    ``max_processes``: processes and threads (cgroup pids). ``cpu_cores``: CPU quota.
    ``file_size_mb``, ``open_files``: per process (rlimits). ``tmp_mb``: size of the private
    ``/tmp`` and ``/dev/shm`` (bwrap); in the fallback, the blocks (and ``tmp_mb x 16`` files)
    the run may keep on the host's disk (``diskguard``)."""

    memory_mb: int = 512
    cpu_s: float | None = None
    max_processes: int = 64
    cpu_cores: float = 1.0
    file_size_mb: int = 64
    open_files: int = 256
    tmp_mb: int = 512

    def __post_init__(self) -> None:
        for name in ("memory_mb", "cpu_s", "cpu_cores"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be > 0, got {value}")


@dataclass(frozen=True)
class Ending:
    """How a run ended, as the sandbox saw it (never as the program said): ``kind`` is
    ``exit`` (``code`` its status), ``signal`` (``code`` the signal), ``timeout`` (``clock``
    ``cpu`` or ``wall``: the run's limit, or the per-process CPU limit the kernel enforces),
    ``memory`` (killed by the run's memory limit), ``output`` (over the cap), ``disk`` (the
    fallback: more files on the host's disk than ``Limits.tmp_mb``), ``files`` (more open
    files than its share of the machine's table, ``filetable``), ``commit`` (more memory
    committed than its memory limit, on a host in strict overcommit: ``commitguard``) or
    ``stopped``
    (the caller's judge had its verdict)."""

    kind: str
    code: int | None = None
    clock: str = ""

    def describe(self) -> str:
        """A short phrase for messages, e.g. ``killed by signal 9 (SIGKILL)``."""
        if self.kind == "exit":
            return f"exit code {self.code}"
        if self.kind == "signal":
            try:
                name = signal.Signals(self.code).name  # type: ignore[arg-type]
            except ValueError:
                name = "unknown"
            return f"killed by signal {self.code} ({name})"
        if self.kind == "timeout":
            return "over its CPU-time limit" if self.clock == "cpu" else "over its wall-clock limit"
        if self.kind == "memory":
            return "killed at its memory limit"
        if self.kind == "output":
            return "output over the cap"
        if self.kind == "disk":
            return "over its disk limit (the files it keeps)"
        if self.kind == "files":
            return "over its share of the machine's open-file table"
        if self.kind == "commit":
            return "over its memory limit in memory committed (strict overcommit)"
        return "stopped at its verdict"


@dataclass(frozen=True)
class ExecResult:
    """What a sandboxed run printed and how it ended.

    ``exit_code`` is the process's status (negative: killed by that signal) or None when the
    sandbox killed it (time limit or output flood). Output beyond the cap is dropped and
    ``output_truncated`` is set; the run is then killed. ``cpu_time_s``: CPU seconds the whole
    run used (its cgroup), None where no cgroup counts it. ``ending``: how it ended, from the
    sandbox's own evidence (None only for results not made by a sandboxed run).
    """

    stdout: str
    stderr: str
    exit_code: int | None
    timed_out: bool
    output_truncated: bool
    duration_s: float
    isolation: str
    cpu_time_s: float | None = None
    ending: Ending | None = None

    @property
    def ok(self) -> bool:
        """Exited by itself with status 0."""
        return self.exit_code == 0 and not self.timed_out and not self.output_truncated
