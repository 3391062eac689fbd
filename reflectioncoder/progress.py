"""Progress for people: a live bar on a terminal, plain lines in a log file.

On a terminal, ``Progress`` is a tqdm bar. When stderr is not a terminal (a log file, CI, a
pipe) it prints one plain line every ``every`` items and a last one at the end: no carriage
returns, no escape codes. ``quiet()`` turns every bar off, ours and third-party ones (tqdm and
Hugging Face read ``TQDM_DISABLE`` and ``HF_HUB_DISABLE_PROGRESS_BARS``).
"""

from __future__ import annotations

import os
import sys
import time

_enabled = True


def is_terminal() -> bool:
    """Whether stderr is a terminal (where a live bar belongs)."""
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def quiet(all_bars: bool = True) -> None:
    """No live bars from here on: third-party ones off, ours too when ``all_bars``."""
    global _enabled
    if all_bars:
        _enabled = False
    os.environ["TQDM_DISABLE"] = "1"
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    if "transformers" in sys.modules:
        import transformers

        transformers.logging.disable_progress_bar()


def setup_output(progress: bool = True) -> None:
    """Call once per command: no live bars unless stderr is a terminal and ``progress``."""
    if not progress:
        quiet(all_bars=True)
    elif not is_terminal():
        quiet(all_bars=False)  # our plain lines stay; third-party bars would redraw


class Progress:
    """``update(n)``, ``set_total(total)``, ``note(text)``, ``close()``: a bar or plain lines."""

    def __init__(
        self,
        total: int | None = None,
        desc: str = "",
        unit: str = "it",
        enabled: bool = True,
        every: int | None = None,
        initial: int = 0,
        parallel: int = 1,
    ) -> None:
        self.total = total
        self.desc = desc
        self.unit = unit
        # ``initial``: items done before this process (a resumed run); the rate and the time
        # left count only the items done here.
        self.n = self.initial = self._printed_at = initial
        # ``parallel``: items run that many at a time. Once every item left is running, the
        # rate says nothing about when they end (one may hang until its time limit): no time
        # left is shown then, only how many are still running.
        self.parallel = parallel
        self.enabled = enabled and _enabled
        self.every = every
        self.text = ""
        self._start = time.monotonic()
        self._bar = None
        if self.enabled and is_terminal():
            from tqdm import tqdm

            self._bar = tqdm(
                total=total,
                desc=desc,
                unit=unit,
                initial=initial,
                leave=False,
                dynamic_ncols=True,
                disable=False,
            )

    def set_total(self, total: int) -> None:
        self.total = total
        if self._bar is not None:
            self._bar.total = total

    def note(self, text: str) -> None:
        """Text shown after the count (set it before ``update`` so it shows the item just done)."""
        self.text = text
        if self._bar is not None:
            self._bar.set_postfix_str(text, refresh=False)

    def update(self, n: int = 1) -> None:
        self.n += n
        if self._bar is not None:
            running = self.running_at_the_end()
            self._bar.bar_format = _TAIL_FORMAT.format(running=running) if running else None
            self._bar.update(n)
        elif self.enabled and self.n - self._printed_at >= self._every():
            self._line()

    def __call__(self, n: int = 1) -> None:
        self.update(n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        elif self.enabled and self.n > self._printed_at and sys.exc_info()[0] is None:
            self._line()  # the last count; not when an error is on its way to the user
        self.enabled = False

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _every(self) -> int:
        if self.every:
            return self.every
        return max(1, (self.total or 0) // 10) if self.total else 100

    def _line(self) -> None:
        self._printed_at = self.n
        of = f"/{self.total}" if self.total else ""
        seconds = time.monotonic() - self._start
        text = f"  {self.text}" if self.text else ""
        left = self.seconds_left(seconds)
        eta = f", {duration(left)} left" if left is not None else ""
        if self.running_at_the_end():
            eta = f", the last {self.running_at_the_end()} running"
        print(
            f"{self.desc}: {self.n}{of} {self.unit}s{text}  ({seconds:.0f} s{eta})",
            file=sys.stderr,
            flush=True,
        )

    def seconds_left(self, seconds: float) -> float | None:
        """The time left at this process's rate so far (None before an item, once done, or
        once every item left is running: see ``parallel``)."""
        done = self.n - self.initial
        if not self.total or done <= 0 or self.n >= self.total or self.running_at_the_end():
            return None
        return seconds / done * (self.total - self.n)

    def running_at_the_end(self) -> int:
        """How many items are left when all of them are running at once (else 0)."""
        left = (self.total or 0) - self.n
        return left if self.parallel > 1 and 0 < left <= self.parallel else 0


# tqdm's bar without its time left (its rate's guess) once the last items are all running
_TAIL_FORMAT = "{{l_bar}}{{bar}}| {{n_fmt}}/{{total_fmt}} [{{elapsed}}, the last {running} running]"


def duration(seconds: float) -> str:
    """``42 s``, ``7.5 min``, ``3.2 h``: a time a person reads at a glance."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"
