"""Red team, round 5: device nodes in the fallback without Landlock (kernels before 5.13, or
Landlock off). The run's uid is not root, but every node the host made world-readable or
world-writable was the program's: ``/dev/ptmx`` (the machine's terminals: a sample held them
all, ``test_redteam4_pty.py``), and on a GPU machine ``/dev/nvidia*`` (0666: another job's GPU
memory), ``/dev/kvm`` where udev makes it 0666, ``/dev/fuse``... Landlock and bubblewrap limit
a run to ``null``, ``zero``, ``full``, ``random``, ``urandom`` and ``tty``; without Landlock the
fallback now puts each run in a v1 ``devices`` cgroup that allows only those (the kernel checks
it at every open and mknod, whatever the path). A node planted with mode 0666 stands for the
host's GPU or KVM nodes.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile

import pytest
import test_redteam4_ipc

from reflectioncoder.eval import multiple, sandbox
from reflectioncoder.eval.sandbox import process

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the attacks are root's: run as root")
level = test_redteam4_ipc.level  # the fixture: bwrap, the fallback, the fallback without Landlock

_FUSE = (10, 229)  # a harmless character device to plant (opening it starts nothing)

PROGRAMS = {
    "cpp": r"""
#include <cstdio>
#include <fcntl.h>
int main(int argc, char** argv) {
    const char* paths[] = {"/dev/ptmx", "{planted}", "/dev/null", "/dev/urandom"};
    for (const char* p : paths)
        std::printf("%s %s\n", p, open(p, O_RDWR | O_NOCTTY) >= 0 ? "opened" : "refused");
}
""",
    "sh": r"""
for p in /dev/ptmx {planted} /dev/null /dev/urandom; do
  if (exec 5<>"$p") 2>/dev/null; then echo "$p opened"; else echo "$p refused"; fi
done
""",
}


@pytest.fixture
def planted():
    """A 0666 character device node in a folder any user can reach (a GPU's node stands so)."""
    folder = tempfile.mkdtemp(prefix="rc-redteam5-dev-")
    os.chmod(folder, 0o755)
    node = os.path.join(folder, "gpu")
    os.mknod(node, 0o666 | stat.S_IFCHR, os.makedev(*_FUSE))
    os.chmod(node, 0o666)
    yield node
    shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.parametrize("language", sorted(PROGRAMS))
def test_a_run_opens_only_the_harmless_devices(level, language, planted):
    if multiple.toolchain_problem(language):
        pytest.skip(multiple.toolchain_problem(language))
    res = multiple.run_program(language, PROGRAMS[language].replace("{planted}", planted))
    seen = dict(line.split() for line in res.stdout.splitlines() if line.startswith("/"))
    assert seen.get("/dev/null") == "opened" and seen.get("/dev/urandom") == "opened", res
    assert seen.get("/dev/ptmx") != "opened", f"{language} at {level} opened a terminal"
    assert seen.get(planted) != "opened", f"{language} at {level} opened a planted device node"


def test_the_level_names_the_device_cgroup(level):
    """The cgroup is made, and named in the level, only where nothing else limits the nodes."""
    iso = process.isolation()
    if level != "rlimits-no-landlock":
        assert not iso.device_cgroup and "devices" not in iso.name
        return
    if iso.cgroup is None or iso.cgroup.devices is None:
        pytest.skip("no v1 devices cgroup can be made here")
    assert iso.device_cgroup and "devices" in iso.name
    gaps = " ".join(sandbox.not_guaranteed(iso.name, python_only=False))
    assert "/dev/ptmx" not in gaps and gaps == " ".join(iso.not_guaranteed(python_only=False))


TERMINAL = r"""
#include <cstdio>
#include <dirent.h>
#include <fcntl.h>
#include <string>
#include <sys/ioctl.h>
#include <termios.h>
#include <unistd.h>
int main() {
    char c = 'x';
    for (int fd = 0; fd < 3; fd++)
        if (ioctl(fd, TIOCSTI, &c) == 0) std::printf("typed into %d\n", fd);
    std::string paths[] = {"/dev/tty", "/dev/console", "/dev/tty0", "/dev/ptmx"};
    for (auto& p : paths)
        if (open(p.c_str(), O_RDWR | O_NOCTTY) >= 0) std::printf("opened %s\n", p.c_str());
    if (DIR* d = opendir("/dev/pts"))
        while (dirent* e = readdir(d)) {
            std::string p = std::string("/dev/pts/") + e->d_name;
            if (e->d_name[0] != '.' && open(p.c_str(), O_RDWR | O_NOCTTY) >= 0)
                std::printf("opened %s\n", p.c_str());
        }
    std::puts("checked");
}
"""


def test_no_terminal_to_type_into(level):
    """The question left by round 4 for the fallback without Landlock: what a terminal lets a
    run do. It has none: its own session (no controlling terminal: ``/dev/tty`` is ENXIO), pipes
    for 0-2 (no ``TIOCSTI``), the host's terminals and console are root's, and the devices cgroup
    refuses ``/dev/ptmx`` (a new terminal of its own)."""
    if multiple.toolchain_problem("cpp"):
        pytest.skip(multiple.toolchain_problem("cpp"))
    res = multiple.run_program("cpp", TERMINAL)
    assert "checked" in res.stdout, res
    assert [line for line in res.stdout.splitlines() if line != "checked"] == [], level
