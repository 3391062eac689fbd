"""A sandboxed process's I/O: stdin fed, stdout and stderr collected (or judged line by line)
until it ends, a deadline passes (wall clock or the run's CPU clock), the output exceeds its
cap or the caller's judge says stop (on a line, or from its watchdog between reads).
Event-driven: a selector on the pipes, then a pidfd."""

from __future__ import annotations

import contextlib
import os
import selectors
import subprocess
import time
from collections.abc import Callable

from reflectioncoder.eval.sandbox.records import IDLE_SHARE

__all__ = ["IdleRule", "Pump"]


class Pump:
    """One process's pipes on one selector; each step returns why to stop, or None."""

    def __init__(
        self,
        proc: subprocess.Popen,
        data_in: bytes,
        deadlines: tuple[float, float | None, Callable[[], float | None]],
        limit: int,
        chunks: dict[int, list[bytes]],
        sizes: dict[int, int],
        on_line: Callable[[bytes], bool | bytes] | None,
        watchdog: Callable[[], bool] | None = None,
        on_exit: Callable[[], None] | None = None,
    ) -> None:
        self.proc, self.limit, self.on_line, self.watchdog = proc, limit, on_line, watchdog
        self.on_exit = on_exit
        self.chunks, self.sizes = chunks, sizes
        self.deadline, self.cpu_deadline, self.cpu_clock = deadlines
        self.poll = 0.5 if self.cpu_deadline is None and self.watchdog is None else 0.05
        self.next_watch = 0.0
        self.sel = selectors.DefaultSelector()
        assert proc.stdin and proc.stdout and proc.stderr
        self.streams = {proc.stdout.fileno(): 1, proc.stderr.fileno(): 2}
        for fd in self.streams:
            os.set_blocking(fd, False)
            self.sel.register(fd, selectors.EVENT_READ)
        self.view, self.pos = memoryview(data_in), 0
        self.in_fd = proc.stdin.fileno()
        self.in_open = bool(data_in) or self.on_line is not None  # the judge may send more
        if self.in_open:
            os.set_blocking(self.in_fd, False)
        if data_in:
            self.sel.register(self.in_fd, selectors.EVENT_WRITE)
        elif not self.in_open:
            proc.stdin.close()
        self.open_reads = len(self.streams)
        self.partial: list[bytes] = []  # the line being read, in chunks: joined once, when it ends
        self.partial_size = 0
        self.exit_fd = self._watch_exit() if on_exit is not None else None

    def run(self) -> str | None:
        """Feed stdin and collect stdout/stderr until the process exits, a deadline passes
        (wall clock, or the run's CPU clock), the output exceeds ``limit`` or ``on_line`` says
        stop, or ``watchdog`` does (asked every 50 ms, after reading what the pipes held).
        ``on_line`` may answer a line with bytes instead: more input, fed to the program (in
        line mode its stdin stays open for that). Returns why the sandbox stopped it:
        ``"wall"`` or ``"cpu"`` (a deadline), ``"output"`` (over ``limit``), ``"stopped"``
        (``on_line`` or ``watchdog`` said so), or None (it ended by itself)."""
        try:
            return self.until_output_closes() or self.until_exit() or self.last_line()
        finally:
            self.close()

    def over_time(self) -> str | None:
        if time.monotonic() >= self.deadline:
            return "wall"
        used = self.cpu_clock() if self.cpu_deadline is not None else None
        over = used is not None and used >= self.cpu_deadline  # type: ignore[operator]
        return "cpu" if over else None

    def ask_watchdog(self) -> str | None:
        """Ask the watchdog (every 50 ms at most), right after reading what the pipes held:
        with output still unread (this thread was slow to read it) the program may be waiting
        on us, and lines not yet judged would make its step look longer than it is."""
        if self.watchdog is None or time.monotonic() < self.next_watch:
            return None
        self.next_watch = time.monotonic() + 0.05
        return "stopped" if self.watchdog() else None

    def _watch_exit(self) -> int | None:
        """A pidfd of the main process on the selector (None: a kernel before 5.3)."""
        try:
            fd = os.pidfd_open(self.proc.pid)
        except (AttributeError, OSError):
            return None
        self.sel.register(fd, selectors.EVENT_READ)
        return fd

    def main_exited(self) -> None:
        """The main process ended: ``on_exit`` ends what it left (its pipes then close)."""
        fd, self.exit_fd = self.exit_fd, None
        if fd is not None:
            self.sel.unregister(fd)
            os.close(fd)
        self.on_exit()  # type: ignore[misc]

    def until_output_closes(self) -> str | None:
        """Feed stdin and read both pipes until the program closes them (with ``on_exit``,
        until its main process ends and what it left is killed: a box's end)."""
        while self.open_reads:
            if clock := self.over_time():
                return clock
            left = self.deadline - time.monotonic()
            for key, _ in self.sel.select(timeout=min(max(left, 0.001), self.poll)):
                if key.fd == self.exit_fd:
                    self.main_exited()
                elif key.fd == self.in_fd:
                    self._feed()
                elif stop := self._read(key.fd):
                    return stop
            if stop := self.ask_watchdog():
                return stop
        return None

    def _feed(self) -> None:
        fd = self.in_fd
        try:
            self.pos += os.write(fd, self.view[self.pos : self.pos + 65536])
        except BlockingIOError:
            return
        except OSError:  # the program closed its stdin: drop the rest, and what comes later
            self.pos, self.in_open = len(self.view), False
        if self.pos >= len(self.view):
            self.sel.unregister(fd)
            if not self.in_open or self.on_line is None:
                self.in_open = False
                self.proc.stdin.close()  # type: ignore[union-attr]

    def send(self, data: bytes) -> None:
        """More input (a judge's answer to a line), after what is still to be fed."""
        if not self.in_open:
            return
        self.view, self.pos = memoryview(bytes(self.view[self.pos :]) + data), 0
        if self.in_fd not in self.sel.get_map():
            self.sel.register(self.in_fd, selectors.EVENT_WRITE)

    def _read(self, fd: int) -> str | None:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            return None
        if not chunk:
            self.sel.unregister(fd)
            self.open_reads -= 1
            return None
        which = self.streams[fd]
        if self.on_line is not None and which == 1:
            return self._judge_lines(chunk)
        room = self.limit - self.sizes[which]
        self.chunks[which].append(chunk[: max(room, 0)])
        self.sizes[which] += len(chunk)
        return "output" if self.sizes[which] > self.limit else None

    def _judge_lines(self, chunk: bytes) -> str | None:
        """Line mode: nothing is kept; the cap applies to one line. A long line costs linear
        time (a flood without newlines must not cost quadratic)."""
        if b"\n" in chunk:
            *lines, rest = (b"".join(self.partial) + chunk).split(b"\n")
            self.partial, self.partial_size = [rest], len(rest)
            for line in lines:
                if len(line) > self.limit:
                    return "output"
                verdict = self.on_line(line)  # type: ignore[misc]
                if verdict is True:
                    return "stopped"
                if verdict:  # more input for the program
                    self.send(verdict)
        else:
            self.partial.append(chunk)
            self.partial_size += len(chunk)
        return "output" if self.partial_size > self.limit else None

    def until_exit(self) -> str | None:
        """Output closed; the program may still run (or wait): wait for it, or a deadline."""
        proc = self.proc
        if proc.poll() is not None:
            return None
        nap = self.poll
        if self.exit_fd is None:
            try:  # a pidfd is readable when the process ends: no polling
                self.sel.register(os.pidfd_open(proc.pid), selectors.EVENT_READ)
            except (AttributeError, OSError):  # kernel before 5.3
                nap = 0.01
        while proc.poll() is None:
            if clock := self.over_time():
                return clock
            self.sel.select(timeout=min(max(self.deadline - time.monotonic(), 0.001), nap))
            if stop := self.ask_watchdog():
                return stop
        return None

    def last_line(self) -> str | None:
        """Line mode: the last line, when the output did not end with a newline."""
        tail = b"".join(self.partial)
        if self.on_line is not None and tail and self.on_line(tail) is True:
            return "stopped"
        return None

    def close(self) -> None:
        for key in list(self.sel.get_map().values()):
            if key.fd not in self.streams and key.fd != self.in_fd:
                os.close(key.fd)  # the pidfd
        self.sel.close()
        stdin = self.proc.stdin
        if stdin is not None and not stdin.closed:
            with contextlib.suppress(OSError):
                stdin.close()


class IdleRule:
    """A run that waits instead of computing (a sleep, SIGSTOP on itself, a blocking read):
    past ``2 x cpu_s + 1`` seconds of wall time with less than ``IDLE_SHARE`` of that in CPU
    time, and idle over a ``window`` (``cpuwait``: a run starved by the machine's load waits
    runnable, not idle), it is over its time limit now rather than at the wall-clock backstop
    (``5 x cpu_s + 10`` for ``run_python``)."""

    def __init__(self, start: float, cpu0: float, cpu_s: float, clock, window=None) -> None:
        self.start, self.cpu0, self.clock, self.window = start, cpu0, clock, window
        self.after = 2 * cpu_s + 1
        self.fired = False

    def __call__(self) -> bool:
        wall = time.monotonic() - self.start
        if wall > self.after:
            used = self.clock()
            looks_idle = used is not None and used - self.cpu0 < IDLE_SHARE * wall
            if not looks_idle and self.window is not None:
                self.window.reset()
            self.fired = looks_idle and (self.window is None or self.window.idle())
        return self.fired
