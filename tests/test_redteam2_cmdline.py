"""Every user can read every process's command line (``/proc/<pid>/cmdline``): a key given as
``reflectioncoder evaluate --api-key`` is there, and a MultiPL-E sample that prints it into its
stderr gets it into the result (``stderr_tail``). Under bubblewrap the box's own PID namespace
shows no process but the run's; the fallback cannot hide them (docs/evaluation.md's threat
model: pass keys through a file or the environment)."""

from __future__ import annotations

import subprocess
import sys
import uuid

import pytest

from reflectioncoder.eval import multiple, sandbox

pytestmark = pytest.mark.skipif(not sandbox.bwrap_works(), reason="bubblewrap cannot run here")

SPY = (
    'for f in /proc/[0-9]*/cmdline; do tr "\\0" " " < "$f" >&2 2>/dev/null; echo >&2; done\n'
    "exit 1\n"
)


def test_a_box_reads_no_other_command_line(monkeypatch):
    monkeypatch.setenv("REFLECTIONCODER_SANDBOX", "bwrap")
    key = f"sk-rc-{uuid.uuid4().hex}"
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", key])
    try:
        res = multiple.run_program("sh", SPY)
    finally:
        holder.kill()
        holder.wait()
    assert "bash" in res.stderr  # it read command lines: its own
    assert key not in res.stdout + res.stderr
