"""Red team, round 4: what a run inherits from the scorer. Two ways out that hold, tested at
each level as root:

- descriptors: samples started at the same time from the scorer's threads (the pipes of one
  are open in the scorer while another forks) hold only their own stdin, stdout, stderr and
  nonce descriptor (C++ walks every descriptor number; a leaked one would be a sibling's
  result pipe or the scorer's files);
- setuid programs: a setuid-root copy of ``id`` and ``touch`` bound into the box runs as the
  run's uid (``no_new_privs``, and bubblewrap's mounts are ``nosuid``), so it can neither
  report uid 0 nor create a file in a folder only root may write.
"""

from __future__ import annotations

import os
import shutil
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import test_redteam4_ipc

from reflectioncoder.eval import multiple, sandbox

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the attacks are root's: run as root")
level = test_redteam4_ipc.level  # the fixture: bwrap, the fallback, the fallback without Landlock


# every open descriptor, and what it is
DESCRIPTORS = r"""
#include <cstdio>
#include <fcntl.h>
#include <unistd.h>
int main() {
    for (int fd = 0; fd < 4096; fd++) {
        if (fcntl(fd, F_GETFD) < 0) continue;
        char path[64], target[256] = {0};
        std::snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
        readlink(path, target, sizeof target - 1);
        std::printf("fd %d %s\n", fd, target);
    }
}
"""


def test_samples_started_together_hold_only_their_own_descriptors(level):
    if multiple.toolchain_problem("cpp"):
        pytest.skip(multiple.toolchain_problem("cpp"))

    def one(_):
        return multiple.run_program("cpp", DESCRIPTORS, nonce=f"rc-done-{uuid.uuid4().hex}")

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(one, range(4)))
    for res in results:
        fds = [line.split(" ", 2) for line in res.stdout.splitlines() if line.startswith("fd ")]
        assert res.exit_code == 0 and fds, res
        assert [int(fd) for _, fd, _ in fds] == [0, 1, 2, 3], (level, fds)


@pytest.fixture
def setuid_tools():
    """A root-owned folder only root may write, holding setuid-root copies of id and touch."""
    folder = Path("/var/tmp") / f"rc-redteam4-{uuid.uuid4().hex}"
    folder.mkdir(mode=0o755)
    try:
        for tool in ("id", "touch"):
            copy = folder / tool
            shutil.copy(shutil.which(tool) or f"/usr/bin/{tool}", copy)
            copy.chmod(0o4755)
        yield folder
    finally:
        shutil.rmtree(folder)


def test_setuid_programs_gain_nothing(level, setuid_tools):
    tools = setuid_tools
    script = f"{tools}/id -u; {tools}/id -un 2>&1; {tools}/touch {tools}/made; echo done"
    res = sandbox.run_sandboxed(["/bin/sh", "-c", script], ro_binds=[str(tools)], timeout_s=20)
    lines = res.stdout.splitlines()
    assert lines and lines[-1] == "done", res
    assert lines[0] not in ("", "0"), (level, res.stdout)  # the run's uid, not root's
    assert "root" not in res.stdout
    assert not (tools / "made").exists(), level
