"""Red team, round 10: calls the box's seccomp filter let through because it lists what is
refused.

``memfd_secret`` (Linux 5.14, on by default since 6.5) hands out pages the kernel takes out of
its own direct map: each one splits the huge page of the kernel's map that held it, for the
whole machine and for good (the kernel never merges them back), and while any is held the
machine cannot hibernate. No toolchain uses it; a C++ sample got one at every level (bounded
only by RLIMIT_MEMLOCK, per process). Now refused (EPERM), every level.

Calls newer than the table: the filter lets through every number it does not list, so each
kernel's new calls reached every box until a round listed them (round 5: ``open_tree_attr``,
Linux 6.15, opened ``/``). Every call newer than ``NEWEST_SYSCALL`` now answers ENOSYS, as an
older kernel does (programs fall back, as glibc does from ``clone3``). This machine's kernel
has none above it, so that half is checked on the filter's program, run here by a small BPF
interpreter, for both machines and both filters.
"""

from __future__ import annotations

import errno
import os
import struct

import pytest
import test_redteam4_ipc

from reflectioncoder.eval import multiple
from reflectioncoder.eval.sandbox import syscall_filter

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the attacks are root's: run as root")
level = test_redteam4_ipc.level  # the fixture: bwrap, the fallback, the fallback without Landlock

SECRET = r"""
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>
int main() {
    long fd = syscall(447, 0);  // memfd_secret: x86-64 and aarch64 alike
    if (fd < 0) {
        std::printf("memfd_secret %s\n", errno == EPERM ? "EPERM" : strerror(errno));
        return 0;
    }
    bool sized = ftruncate(fd, 4096) == 0;
    char* page = (char*)mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    bool taken = sized && page != MAP_FAILED && (page[0] = 1);
    std::printf("memfd_secret ok%s\n", taken ? ", a page out of the kernel's map" : "");
}
"""


def test_memfd_secret_is_refused(level):
    if multiple.toolchain_problem("cpp"):
        pytest.skip(multiple.toolchain_problem("cpp"))
    res = multiple.run_program("cpp", SECRET)
    assert res.stdout.strip() == "memfd_secret EPERM", (level, res)


def _run(program: bytes, nr: int, arch: int, args: tuple[int, ...] = ()) -> int:
    """What the classic BPF ``program`` returns for syscall ``nr`` (the subset the filter
    uses: absolute loads of seccomp_data, jeq, jgt, jge, jset, ret)."""
    words = [0] * 16
    words[0], words[1] = nr, arch
    for i, value in enumerate(args):
        words[4 + 2 * i], words[5 + 2 * i] = value & 0xFFFFFFFF, value >> 32
    insns = [struct.unpack("HBBI", program[i : i + 8]) for i in range(0, len(program), 8)]
    acc, pc = 0, 0
    while True:
        code, jt, jf, k = insns[pc]
        if code == 0x20:
            acc = words[k // 4]
        elif code == 0x06:
            return k
        else:
            taken = {0x15: acc == k, 0x25: acc > k, 0x35: acc >= k, 0x45: bool(acc & k)}[code]
            pc += jt if taken else jf
        pc += 1


@pytest.mark.parametrize("machine", ["x86_64", "aarch64"])
@pytest.mark.parametrize("pid", [None, 4242], ids=["box", "fallback-python"])
def test_calls_newer_than_the_table_answer_enosys(machine, pid):
    program = syscall_filter.seccomp_filter(machine, pid)
    arch = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}[machine]
    allow, enosys, eperm = 0x7FFF0000, 0x00050000 | errno.ENOSYS, 0x00050000 | errno.EPERM
    newest = syscall_filter.NEWEST_SYSCALL
    for nr in (newest + 1, 470, 471, 500, 1000, 0x3FFFFFFF):
        assert _run(program, nr, arch) == enosys, (machine, nr)
    read, openat = (0, 257) if machine == "x86_64" else (63, 56)
    for nr in (read, openat, newest, 468):  # file_getattr, file_setattr: reviewed, allowed
        assert _run(program, nr, arch) == allow, (machine, nr)
    assert _run(program, 447, arch) == eperm  # memfd_secret
