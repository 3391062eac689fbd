"""Run a program in the evaluation sandbox and keep what the interpreter printed.

construct/ never runs a written or mutated program itself: every run goes through
``reflectioncoder.eval.sandbox.run_python`` (the one place that runs untrusted code).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# The sandbox writes the program to a temporary file whose name changes from run to run; the
# traceback names it. It is replaced by this fixed name so a seeded build is reproducible.
PROGRAM_NAME = "main.py"
MAX_OUTPUT_CHARS = 2000
# A test program's last line prints this: a program that exits 0 before its tests ran
# (``sys.exit(0)``, ``os._exit(0)`` in the code under test) has not passed.
ALL_PASSED = "All tests passed."
_FILE_RE = re.compile(r'File "([^"]+)"')


@dataclass(frozen=True)
class Execution:
    """What running a program printed (stdout then stderr), and whether its tests passed."""

    output: str
    passed: bool
    timed_out: bool
    exit_code: int | None


def _normalise(text: str) -> str:
    """Program paths -> PROGRAM_NAME (other files' paths kept), trailing space trimmed, capped."""

    def fix(match: re.Match) -> str:
        path = match.group(1)
        if path.startswith("<") or "/lib/python" in path or "site-packages" in path:
            return match.group(0)
        return f'File "{PROGRAM_NAME}"'

    text = _FILE_RE.sub(fix, text).rstrip()
    if len(text) > MAX_OUTPUT_CHARS:  # keep the end: the error is in the last lines
        text = "...\n" + text[-MAX_OUTPUT_CHARS:]
    return text


def run_program(source: str, timeout_s: float = 5.0, memory_mb: int = 512) -> Execution:
    """Run ``source`` as a whole program in the sandbox; passed = exit code 0, no timeout,
    and :data:`ALL_PASSED` the last line printed (test programs end by printing it)."""
    from reflectioncoder.eval.sandbox import run_python

    result = run_python(source, timeout_s=timeout_s, memory_mb=memory_mb)
    stdout = result.stdout or ""
    stderr = result.stderr or ""
    output = stdout + ("\n" if stdout and stderr and not stdout.endswith("\n") else "") + stderr
    if result.timed_out:
        output = output.rstrip() + ("\n" if output.strip() else "")
        output += f"TimeoutError: the program did not finish within {timeout_s:g} seconds"
    finished = stdout.rstrip().endswith(ALL_PASSED)
    passed = result.exit_code == 0 and not result.timed_out and finished
    return Execution(_normalise(output), passed, bool(result.timed_out), result.exit_code)
