"""Progress for people: a live bar on a terminal, plain lines in a log file."""

from __future__ import annotations

import fcntl
import os
import pty
import struct
import subprocess
import sys
import termios

from reflectioncoder.progress import Progress

SCRIPT = """
from reflectioncoder.progress import Progress
with Progress(4, "work", unit="item", every=2) as bar:
    for k in range(4):
        bar.note(f"last {k}")
        bar.update()
"""


def test_plain_lines_off_a_terminal(capfd):
    with Progress(10, "work", unit="item", every=4) as bar:
        for k in range(10):
            bar.note(f"item {k} done")
            bar.update()
    err = capfd.readouterr().err
    assert "\r" not in err and "\x1b" not in err
    lines = err.splitlines()
    assert [line.split("  (")[0] for line in lines] == [
        "work: 4/10 items  item 3 done",  # the text of the item just finished
        "work: 8/10 items  item 7 done",
        "work: 10/10 items  item 9 done",  # the last count, at the end
    ]


def test_disabled_progress_prints_nothing(capfd):
    with Progress(3, "work", enabled=False) as bar:
        bar.update(3)
    assert capfd.readouterr().err == ""


def test_a_live_bar_on_a_terminal():
    main, child = pty.openpty()
    fcntl.ioctl(child, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # 100 columns
    proc = subprocess.Popen(
        [sys.executable, "-c", SCRIPT], stderr=child, stdout=subprocess.DEVNULL, close_fds=True
    )
    os.close(child)
    chunks = []
    while True:
        try:
            data = os.read(main, 4096)
        except OSError:  # the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    assert proc.wait(timeout=60) == 0
    out = b"".join(chunks).decode(errors="replace")
    assert "\r" in out and "work" in out  # tqdm redraws one line
    assert "work: 2/4 items" not in out  # not the plain-line form
