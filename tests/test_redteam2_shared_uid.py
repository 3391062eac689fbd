"""Boxes started by root all ran as host uid 65534, and the kernel keeps some counts per user,
not per process or cgroup: inotify instances (128 per user), message queue bytes, pending
signals. One sample holding every inotify instance it could left a sibling sample scored at
the same time none (``inotify_init1`` failed with EMFILE), and so any host daemon running as
``nobody``. Each run now has a host uid of its own (``runuser``): the hog uses up its own
count only."""

from __future__ import annotations

import os
import threading

import pytest

from reflectioncoder.eval import sandbox

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="started by root, runs get their own uids"),
    pytest.mark.skipif(not sandbox.bwrap_works(), reason="bubblewrap cannot run here"),
]

HOG = """
import ctypes, os, sys, time
libc = ctypes.CDLL(None, use_errno=True)
held = 0
for _ in range(250):
    if libc.inotify_init1(0) < 0:
        break
    held += 1
os.write(1, f"held {held}\\n".encode())
time.sleep(60)
"""

VICTIM = """
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
print(libc.inotify_init1(0), ctypes.get_errno(), flush=True)
"""


def test_a_sample_cannot_use_up_a_siblings_inotify(monkeypatch):
    monkeypatch.setenv("REFLECTIONCODER_SANDBOX", "bwrap")
    held, done, lines = threading.Event(), threading.Event(), []

    def on_line(line: bytes) -> bool:
        lines.append(line.decode())
        held.set()
        return False

    hog = sandbox.PreparedRun(
        sandbox.python_argv(), files={"main.py": HOG, **sandbox.harness_files()}, cpu_s=30
    )
    thread = threading.Thread(
        target=hog.run, kwargs={"timeout_s": 60, "on_stdout_line": on_line, "watchdog": done.is_set}
    )
    thread.start()
    try:
        assert held.wait(30), "the hog never reported"
        victim = sandbox.run_python(VICTIM, timeout_s=10)
    finally:
        done.set()
        thread.join()
    count = int(lines[0].split()[1])
    assert 0 < count < 250, lines  # it took every instance its user may have
    fd, errno = map(int, victim.stdout.split())
    assert fd >= 0, f"the sibling got no inotify instance (errno {errno})"
