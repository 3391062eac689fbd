"""Red team, round 4: pseudo-terminals are a count of the whole machine (``kernel.pty.max``,
4096 by default, of which ``kernel.pty.reserve``, 1024, only the host's own ``/dev/pts`` may
use). A box's ``/dev/pts`` (bubblewrap's fresh instance) drew on the same count: a sample
opening ``/dev/ptmx`` until its descriptors ran out held 253 of them per process, and its 64
processes all 3072 that instances other than the host's may take, so no sibling box (nor a
container on the machine) could open a terminal until it ended. No program scored needs a
terminal: the box's ``/dev/pts`` is now an empty read-only folder. The fallback with Landlock
refuses ``/dev/ptmx`` (not among the devices it may open); without Landlock, its v1 ``devices``
cgroup does (round 5, ``test_redteam5_devices.py``); with neither it is left (the host's own
``/dev/pts``; docs/evaluation.md).
"""

from __future__ import annotations

import os
import threading
import time

import pytest
import test_redteam4_ipc

from reflectioncoder.eval import multiple
from reflectioncoder.eval.sandbox import process

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the attacks are root's: run as root")
level = test_redteam4_ipc.level  # the fixture: bwrap, the fallback, the fallback without Landlock

_PTY_COUNT = "/proc/sys/kernel/pty/nr"

# each opens every terminal it can, in 4 processes (Python: 1 in the fallback, which refuses
# fork), reports, then holds them a while
PROGRAMS = {
    "cpp": r"""
#include <cstdio>
#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>
int main() {
    for (int i = 0; i < 3; i++) if (fork() == 0) break;
    int n = 0;
    while (open("/dev/ptmx", O_RDWR | O_NOCTTY) >= 0 || open("/dev/pts/ptmx", O_RDWR) >= 0) n++;
    std::printf("opened %d\n", n);
    std::fflush(stdout);
    sleep(2);
    while (wait(nullptr) > 0) {}
}
""",
    "python": (
        "import os, time\n"
        "for _ in range(2):\n"
        "    try:\n"
        "        os.fork()\n"
        "    except OSError:  # the fallback refuses it\n"
        "        pass\n"
        "n = 0\n"
        "for path in ('/dev/ptmx', '/dev/pts/ptmx'):\n"
        "    try:\n"
        "        while True:\n"
        "            os.open(path, os.O_RDWR | os.O_NOCTTY)\n"
        "            n += 1\n"
        "    except OSError:\n"
        "        pass\n"
        "print('opened', n, flush=True)\n"
        "time.sleep(2)\n"
    ),
    "sh": r"""
for p in 1 2 3 4; do (
  n=0; fd=10
  while [ $fd -lt 250 ] && eval "exec $fd<>/dev/ptmx" 2>/dev/null; do n=$((n+1)); fd=$((fd+1)); done
  echo "opened $n"; sleep 2) & done; wait
""",
}


@pytest.mark.parametrize("language", sorted(PROGRAMS))
def test_a_run_takes_no_terminal(level, language):
    iso = process.isolation()
    if not (iso.bwrap or iso.landlock or iso.device_cgroup):
        pytest.skip("without Landlock nor a v1 devices cgroup the fallback opens /dev/ptmx (left)")
    if multiple.toolchain_problem(language):
        pytest.skip(multiple.toolchain_problem(language))
    before = int(open(_PTY_COUNT).read())
    peak = [before]
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], int(open(_PTY_COUNT).read()))
            time.sleep(0.02)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        res = multiple.run_program(language, PROGRAMS[language], run_s=10)
    finally:
        done.set()
        watcher.join()
    assert "opened" in res.stdout, res
    # the box's own count, as the kernel keeps it (a little room for the machine's others)
    assert peak[0] - before < 8, (level, language, res.stdout, peak[0] - before)
