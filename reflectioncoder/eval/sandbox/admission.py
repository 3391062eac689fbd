"""Runs admitted only while their memory limits fit the scorer's cgroup and the machine.

Each run's cgroup is nested under the scorer's own, so where that cgroup has a memory limit (a
container's) smaller than the runs' limits together, a run can push the scorer's cgroup over
it without reaching its own: the kernel's OOM killer then picks, among every run's processes
(all at ``oom_score_adj`` 1000), the one with the most resident memory. A sample that filled
its box's tmpfs (charged to its cgroup, to no process's resident size) got an honest sibling
killed that way (``tests/test_redteam5_oom_sibling.py``). So a run whose code may run holds
its memory limit from a budget, the scorer's cgroup limit less the scorer's own resident
memory and a margin, and waits while it does not fit beside the runs holding theirs (a run
alone is always let in: its limit is then its own to reach). The machine's memory is one more
such limit (round 9): where no cgroup limits the scorer, the runs' limits together could pass
it (``--parallel 16`` of Go's 4 GiB on a 32 GiB machine), and the kernel's global OOM killer
picks its victim by the same rule, an honest sibling beside a sample that filled its tmpfs.
"""

from __future__ import annotations

import os
import threading
from functools import lru_cache
from pathlib import Path

__all__ = ["Admission", "admission", "scorer_memory_limit"]

MARGIN = 256 << 20  # the scorer's growth and a box's own start-up, beyond its resident size
_UNLIMITED = 1 << 60  # v1 reports "no limit" as the page counter's maximum (about 2^63)


class Admission:
    """A budget of bytes the runs' memory limits draw on (``limit``: the scorer's cgroup's or
    the machine's, None: no limit, nothing held)."""

    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self.held = 0
        self.cond = threading.Condition()

    def take(self, amount: int) -> int:
        """Hold ``amount`` bytes, waiting while they do not fit beside what other runs hold;
        returns what is held (0: no limit here), for ``give``."""
        if self.limit is None:
            return 0
        with self.cond:
            while self.held and self.held + amount > self.limit - _own_resident() - MARGIN:
                self.cond.wait(0.1)  # the scorer's own memory changes too: look again
            self.held += amount
        return amount

    def give(self, amount: int) -> None:
        if amount:
            with self.cond:
                self.held -= amount
                self.cond.notify_all()


_MAKING = threading.Lock()


def admission() -> Admission:
    """This process's budget (the scorer's cgroup limit or the machine's memory, read once)."""
    with _MAKING:  # lru_cache alone: two runs' first calls at once made two budgets
        return _made()


@lru_cache(maxsize=1)
def _made() -> Admission:
    return Admission(scorer_memory_limit())


def scorer_memory_limit() -> int | None:
    """The smallest memory limit of the scorer's cgroup, those above it (v1 or v2) and the
    machine's memory (``MemTotal``), or None where none can be read."""
    from reflectioncoder.eval.sandbox.cgroup import cgroup_layout

    machine = _machine_memory()
    found = [] if machine is None else [machine]
    layout = cgroup_layout()
    if layout is None or "memory" not in layout.parents:
        return min(found, default=None)
    name = "memory.max" if layout.version == 2 else "memory.limit_in_bytes"
    for folder in (layout.parents["memory"], *layout.parents["memory"].parents):
        try:
            text = (folder / name).read_text().strip()
        except OSError:
            break  # above the mount's top
        if text != "max" and int(text) < _UNLIMITED:
            found.append(int(text))
    return min(found, default=None)


def _machine_memory() -> int | None:
    """The machine's memory (``MemTotal``; swap not counted: a run's cgroup may not swap)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) << 10
    except (OSError, ValueError, IndexError):
        pass
    return None


def _own_resident() -> int:
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        return 0
    return pages * os.sysconf("SC_PAGE_SIZE")
