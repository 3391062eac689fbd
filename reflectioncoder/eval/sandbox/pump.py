"""A sandboxed process's I/O: stdin fed, stdout and stderr collected (or judged line by line)
until it ends, a deadline passes (wall clock or the run's CPU clock), the output exceeds its
cap or the caller's judge says stop. Event-driven: a selector on the pipes, then a pidfd."""

from __future__ import annotations

import contextlib
import os
import selectors
import subprocess
import time
from collections.abc import Callable

__all__ = ["pump"]


def pump(
    proc: subprocess.Popen,
    data_in: bytes,
    deadlines: tuple[float, float | None, Callable[[], float | None]],
    limit: int,
    chunks: dict[int, list[bytes]],
    sizes: dict[int, int],
    on_line: Callable[[bytes], bool] | None,
) -> str | None:
    """Feed stdin and collect stdout/stderr until the process exits, a deadline passes (wall
    clock, or the run's CPU clock), the output exceeds ``limit`` or ``on_line`` says stop.
    Returns why the sandbox stopped it: ``"wall"`` or ``"cpu"`` (a deadline), ``"output"``
    (over ``limit``), ``"stopped"`` (``on_line`` said so), or None (it ended by itself)."""
    deadline, cpu_deadline, cpu_clock = deadlines
    poll = 0.5 if cpu_deadline is None else 0.05

    def over_time() -> str | None:
        if time.monotonic() >= deadline:
            return "wall"
        used = cpu_clock() if cpu_deadline is not None else None
        return "cpu" if used is not None and used >= cpu_deadline else None  # type: ignore[operator]

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
    partial: list[bytes] = []  # the line being read, in chunks: joined once, when it ends
    partial_size = 0
    try:
        while open_reads:
            if clock := over_time():
                return clock
            left = deadline - time.monotonic()
            for key, _ in sel.select(timeout=min(max(left, 0.001), poll)):
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
                    # line mode: nothing is kept; the cap applies to one line. A long line
                    # costs linear time (a flood without newlines must not cost quadratic)
                    if b"\n" in chunk:
                        *lines, rest = (b"".join(partial) + chunk).split(b"\n")
                        partial, partial_size = [rest], len(rest)
                        for line in lines:
                            if len(line) > limit:
                                return "output"
                            if on_line(line):
                                return "stopped"
                    else:
                        partial.append(chunk)
                        partial_size += len(chunk)
                    if partial_size > limit:
                        return "output"
                    continue
                room = limit - sizes[which]
                chunks[which].append(chunk[: max(room, 0)])
                sizes[which] += len(chunk)
                if sizes[which] > limit:
                    return "output"
        if proc.poll() is None:  # output closed; the program may still run (or wait)
            try:  # a pidfd is readable when the process ends: no polling
                sel.register(os.pidfd_open(proc.pid), selectors.EVENT_READ)
                nap = poll
            except (AttributeError, OSError):  # kernel before 5.3
                nap = 0.01
            while proc.poll() is None:
                if clock := over_time():
                    return clock
                sel.select(timeout=min(max(deadline - time.monotonic(), 0.001), nap))
        tail = b"".join(partial)
        if on_line is not None and tail and on_line(tail):
            return "stopped"
        return None
    finally:
        for key in list(sel.get_map().values()):
            if key.fd not in streams and key.fd != in_fd:
                os.close(key.fd)  # the pidfd
        sel.close()
        if not proc.stdin.closed:
            with contextlib.suppress(OSError):
                proc.stdin.close()
