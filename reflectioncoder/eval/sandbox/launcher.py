"""Launching Python in the box: the in-box files (``runner``, ``codec``, ``tagdecode``,
``guards``, ``syscall_filter``) compiled once here and shipped as bytecode, the command lines,
and ``run_python`` for whole programs."""

from __future__ import annotations

import importlib.util
import marshal
import os
import sys
from functools import cache
from pathlib import Path

from reflectioncoder.eval.sandbox.probe import isolation
from reflectioncoder.eval.sandbox.process import run_sandboxed
from reflectioncoder.eval.sandbox.records import ExecResult

__all__ = [
    "harness_argv",
    "harness_files",
    "python_argv",
    "python_env",
    "run_python",
    "site_paths",
    "wall_backstop",
]

# the runner imports codec and guards beside it; codec imports tagdecode, guards syscall_filter
_IN_BOX = ("runner", "codec", "tagdecode", "guards", "syscall_filter")


@cache
def harness_files() -> dict[str, bytes]:
    """The in-box files as bytecode (``runner.pyc``, ``codec.pyc``, ``tagdecode.pyc``,
    ``guards.pyc``, ``syscall_filter.pyc``): compiled once here, so each sandboxed run skips
    compiling them."""
    folder = Path(__file__).parent
    flags = (0).to_bytes(4, "little")  # timestamp-based pyc, checked against nothing
    header = importlib.util.MAGIC_NUMBER + flags + (0).to_bytes(8, "little")
    files = {}
    for name in _IN_BOX:
        code = compile((folder / f"{name}.py").read_text(), f"{name}.py", "exec")
        files[f"{name}.pyc"] = header + marshal.dumps(code)
    return files


def harness_argv() -> list[str]:
    """The runner's test-run mode, waiting for its job on stdin (``runner`` docstring)."""
    # -S skips site's start-up work (tens of ms per run); the job carries site-packages instead
    return [sys.executable, "-I", "-S", "-B", "{src}/runner.pyc", "--warm"]


def site_paths() -> list[str]:
    """The host's site-packages, for a job's ``sys_path`` (the runner starts without site)."""
    import site

    return [p for p in site.getsitepackages() if os.path.isdir(p)]


def wall_backstop(cpu_s: float) -> float:
    """The wall-clock limit that goes with a CPU-time limit: generous, so that a loaded machine
    (a run getting a fifth of a core) does not change a verdict; it stops programs that sleep or
    block."""
    return 5.0 * cpu_s + 10.0


def python_argv(script: str = "main.py") -> list[str]:
    """argv that runs ``{src}/script`` with this interpreter behind the runner's guards (the
    files of ``harness_files()`` beside it)."""
    return [sys.executable, "-I", "-B", "{src}/runner.pyc", "--run", f"{{src}}/{script}"]


def python_env() -> dict[str, str]:
    """Environment for Python programs: the audit guard is on in the fallback level."""
    return {"RC_SANDBOX_STRICT": "1" if isolation().audit_guard else "0"}


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
        files={"main.py": source, **harness_files()},
        stdin=stdin,
        cpu_s=timeout_s,  # CPU time of the whole run: load on the machine changes nothing
        timeout_s=wall_backstop(timeout_s),
        memory_mb=memory_mb,
        env=python_env(),
        output_limit=64 << 10,
    )
