"""The one place that runs untrusted (model-written) code.

API for callers (construct/, eval/score.py, eval/multiple.py and new MultiPL-E languages)::

    run_sandboxed(argv, files=..., stdin=..., timeout_s=WALL_BACKSTOP,
                  limits=Limits(cpu_s=..., memory_mb=..., ...), ro_binds=[toolchain dirs])
    PreparedRun(argv, limits=...).run(stdin, timeout_s=..., cpu_s=...)  # started ahead
    run_python(source, stdin=..., timeout_s=..., memory_mb=...)          # a whole program
    isolation()  # the typed record of what is in force: .bwrap, .seccomp, .cgroup, .name

Limits are per run (the whole process tree, not per process; ``records.Limits``): memory
(cgroup memory limit, and RLIMIT_AS per process), processes (cgroup pids), CPU seconds of the
run's cgroup (load on the machine does not change them), a CPU quota, and a wall-clock backstop.
``ro_binds`` lists extra host paths a toolchain needs, bound read-only (bwrap);
``toolchain_binds(tools)`` finds them for programs named on PATH.

Isolation levels, strongest first (``isolation()`` decides, ``isolation().name`` says exactly
what is in force):

- ``bwrap``: bubblewrap with its own PID, network, IPC, UTS and cgroup namespaces; the program
  runs as a host uid/gid of the run's own (started by root; else 65534 mapped to the
  caller) with no capability in any set, under the seccomp filter
  ``syscall_filter.seccomp_filter(machine, None)``; ``/proc/sys``, ``/proc/pressure``, ``/dev/pts``
  absent; a file system made only of what a program needs, read-only (``bwrap``). No data,
  cache, home, host socket or cgroup file system is visible. When the PID namespace's first
  process dies the kernel kills every process in it, so nothing outlives the run.
- ``rlimits`` (fallback where bubblewrap or user namespaces are missing): a new session and
  process group, resource limits, a private working directory as ``cwd`` and ``TMPDIR``, a sweep
  of ``/proc`` for processes tagged with the run's marker (children that called ``setsid``), and
  the same seccomp filter for every program (installed between fork and exec), and for Python
  programs a stricter one plus an audit hook that refuses writes and deletes outside the
  working directory, network connections, signals to other processes and new programs.
  Programs run as the caller (started by root: as a uid of each run's own, with no
  capability, ``runuser``); where the kernel has Landlock (``landlock``), each run reads only
  what bubblewrap would bind and changes only its working dir. Weaker: no PID or network
  namespace, no hiding inside bound directories, and native code (ctypes) can bypass the
  audit hook.

Both levels put each run in its own cgroup (``cgroup``: v2, or v1 controllers, where the machine
lets us create one): ``memory`` (the whole tree's memory, /dev/shm included), ``pids``, ``cpu``
(quota) and CPU accounting (the CPU-time limit). The whole tree is killed at the verdict. The
wall-clock backstop kills from outside with SIGKILL, which no program can ignore. Output is
capped; a run that floods it is killed.

Rooms: ``isolation`` (the probe and its record), ``cgroup`` (a run's cgroup), ``bwrap`` (the
box's command line), ``runuser`` (a uid per run when root starts it), ``searchgrant`` (the
fallback's search on a toolchain under a 0700 home, for the runs' group), ``landlock`` (the
fallback's file rules),
``process`` and ``pump`` (start, I/O), ``diskguard`` (the fallback's bound on the files a run
keeps on the host's disk), ``filetable`` (a run's share of the machine's open-file
table, every level), ``commitguard`` (a run's commit bound on a host in strict overcommit),
``spawn`` (the child's settings, environment and files), ``cpuwait`` (a run that looks idle
waits, or is starved), ``admission`` (runs' memory
limits within the scorer cgroup's),
``teardown`` (the kill at the verdict, the clean-up),
``records`` (``Limits``, ``ExecResult``), ``launcher`` (Python in the box), ``result_decode``
(the scorer's bounded reading of result lines); shipped into the box as files: ``codec`` (the
plain-data encoding both sides share; ``tagdecode``, its decoding side), ``runner``,
``guards`` and ``syscall_filter`` (the in-box runner, its audit hook and the seccomp filters).

Force a level with ``REFLECTIONCODER_SANDBOX=bwrap|rlimits`` (``auto`` by default).
"""

from reflectioncoder.eval.sandbox.bwrap import SANDBOX_UID, toolchain_binds
from reflectioncoder.eval.sandbox.launcher import (
    harness_argv,
    harness_files,
    python_argv,
    python_env,
    run_python,
    site_paths,
    wall_backstop,
)
from reflectioncoder.eval.sandbox.probe import (
    Isolation,
    bwrap_works,
    isolation,
    isolation_level,
    not_guaranteed,
    seccomp_available,
)
from reflectioncoder.eval.sandbox.process import PreparedRun, run_sandboxed
from reflectioncoder.eval.sandbox.records import Ending, ExecResult, Limits

__all__ = [
    "SANDBOX_UID",
    "Ending",
    "ExecResult",
    "Isolation",
    "Limits",
    "PreparedRun",
    "bwrap_works",
    "harness_argv",
    "harness_files",
    "isolation",
    "isolation_level",
    "not_guaranteed",
    "python_argv",
    "python_env",
    "run_python",
    "run_sandboxed",
    "seccomp_available",
    "site_paths",
    "toolchain_binds",
    "wall_backstop",
]
