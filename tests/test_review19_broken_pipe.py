"""A BrokenPipeError that is not stdout's is a failure. ``cli.guarded`` took every
BrokenPipeError for a reader that closed stdout (``| head``) and exited 0 in silence: a command
whose child or worker pipe broke reported success. Only stdout's closed reader is quiet now."""

from __future__ import annotations

import subprocess
import sys

# A command body that breaks a pipe of its own (a child that died before reading its input),
# or writes past the proxy into stdout's buffer, whose reader is gone.
BODY = """
import os, sys
from reflectioncoder.cli import guarded

def own_pipe():
    read_end, write_end = os.pipe()
    os.close(read_end)
    os.write(write_end, b"the child's input")
    return 0

def stdout_buffer():
    sys.stdout.buffer.write(b"x" * 1_000_000)
    sys.stdout.buffer.flush()
    return 0

sys.exit(guarded("reflectioncoder demo", {"own": own_pipe, "stdout": stdout_buffer}[sys.argv[1]]))
"""


def test_another_pipe_broken_is_one_line_and_a_failure():
    done = subprocess.run([sys.executable, "-c", BODY, "own"], capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert done.returncode == 1, done
    assert done.stderr.splitlines() == ["reflectioncoder demo: [Errno 32] Broken pipe"]


def test_stdout_reader_gone_past_the_proxy_stays_quiet():
    proc = subprocess.Popen([sys.executable, "-c", BODY, "stdout"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    proc.stdout.close()  # the reader is gone (| head)
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == 0, err
    assert err == ""
