"""The box's seccomp filters, shipped into the box as a file (standard library only): the
syscall table, the BPF programs built from it (``seccomp_filter``: the box's, at every level,
and the fallback's stricter one for Python programs) and their installation.

The host builds the box's filter for bwrap's ``--seccomp`` and for programs of any language in
the fallback (``install_seccomp`` between fork and exec); the in-box runner installs the
stricter one (``deny_processes_by_seccomp``, called by ``guards.install_audit_guard``).
"""

from __future__ import annotations

__all__ = ["NEWEST_SYSCALL", "deny_processes_by_seccomp", "install_seccomp", "seccomp_filter"]

# seccomp: syscalls refused, by (x86-64, aarch64) number from the kernel's unistd tables
# (None: the machine has no such call; aarch64 has only clone and *at variants)
_ARCH = {"x86_64": (0, 0xC000003E), "aarch64": (1, 0xC00000B7)}  # AUDIT_ARCH_*
# name, x86-64 number, aarch64 number (-: none), role, in the form of the kernel's syscall .tbl
# files. "special": calls the filter looks at (clone's flags, signals' targets). "kernel": refused
# at every level (the box's filter and the fallback's): the kernel's own state, other processes'
# memory, namespaces, mounts, sockets of every family (and io_uring, which can make them), kernel
# AIO contexts (io_setup: ``fs.aio-max-nr`` is one count for the machine: a run that took it all
# failed every host io_setup, DeepSpeed's NVMe offload too), keys, tracing, modules, POSIX message
# queues (a queue outlives its run without an IPC namespace, and nothing can list it), System V
# IPC (round 9: in the fallback a run read and wrote the host's 0666 segments and queues and could
# take the machine's counts, failing the host's shmget), the newer mount and quota calls
# (open_tree_attr, quotactl_fd), memfd_secret (round 10: each page it hands out leaves the kernel's
# direct map, splitting its huge pages for the whole machine for good, and while any is held the
# machine cannot hibernate) and legacy calls no program needs (modify_ldt: x86's LDT, an old
# exploit surface; uselib, ustat, sysfs, lookup_dcookie); no toolchain uses any of them. Calls
# newer than NEWEST_SYSCALL answer ENOSYS, as an older kernel does (round 10: the table is a list of
# what is refused, so each kernel's new calls passed until a round listed them; round 5 found
# open_tree_attr opening ``/``); a call is let through once it is reviewed here.
# "process": refused to Python programs in the fallback only (compilers in the box need them;
# rustc spawns its linker through a socketpair, which reaches nothing but its own other end).
# "unsupported": answered EOPNOTSUPP at every level, as a file system without the call answers
# (fallocate: 64 MiB of the host's disk a call, past the fallback's disk guard before its next
# look; round 7: 704 MiB in one look, a 16 MiB bound; glibc's posix_fallocate then writes).
_SYSCALL_TABLE = """
clone                 56  220  special
clone3               435  435  special
kill                  62  129  special
tkill                200  130  special
tgkill               234  131  special
rt_sigqueueinfo      129  138  special
rt_tgsigqueueinfo    297  240  special
fcntl                 72   25  special
setrlimit            160  164  special
prlimit64            302  261  special
mmap                   9  222  special
memfd_create         319  279  special
ptrace               101  117  kernel
process_vm_readv     310  270  kernel
process_vm_writev    311  271  kernel
pidfd_getfd          438  438  kernel
setns                308  268  kernel
unshare              272   97  kernel
mount                165   40  kernel
umount2              166   39  kernel
pivot_root           155   41  kernel
chroot               161   51  kernel
open_by_handle_at    304  265  kernel
name_to_handle_at    303  264  kernel
init_module          175  105  kernel
finit_module         313  273  kernel
delete_module        176  106  kernel
kexec_load           246  104  kernel
kexec_file_load      320  294  kernel
reboot               169  142  kernel
bpf                  321  280  kernel
perf_event_open      298  241  kernel
userfaultfd          323  282  kernel
fsopen               430  430  kernel
fsmount              432  432  kernel
move_mount           429  429  kernel
open_tree            428  428  kernel
fspick               433  433  kernel
fsconfig             431  431  kernel
mount_setattr        442  442  kernel
syslog               103  116  kernel
swapon               167  224  kernel
swapoff              168  225  kernel
settimeofday         164  170  kernel
clock_settime        227  112  kernel
clock_adjtime        305  266  kernel
adjtimex             159  171  kernel
sethostname          170  161  kernel
setdomainname        171  162  kernel
iopl                 172    -  kernel
ioperm               173    -  kernel
quotactl             179   60  kernel
acct                 163   89  kernel
keyctl               250  219  kernel
add_key              248  217  kernel
request_key          249  218  kernel
socket                41  198  kernel
io_uring_setup       425  425  kernel
io_uring_enter       426  426  kernel
io_uring_register    427  427  kernel
io_setup             206    0  kernel
mq_open              240  180  kernel
open_tree_attr       467  467  kernel
quotactl_fd          443  443  kernel
memfd_secret         447  447  kernel
modify_ldt           154    -  kernel
uselib               134    -  kernel
ustat                136    -  kernel
sysfs                139    -  kernel
lookup_dcookie       212   18  kernel
shmget                29  194  kernel
shmat                 30  196  kernel
shmctl                31  195  kernel
shmdt                 67  197  kernel
semget                64  190  kernel
semop                 65  193  kernel
semctl                66  191  kernel
semtimedop           220  192  kernel
msgget                68  186  kernel
msgsnd                69  189  kernel
msgrcv                70  188  kernel
msgctl                71  187  kernel
socketpair            53  199  process
fork                  57    -  process
vfork                 58    -  process
execve                59  221  process
execveat             322  281  process
pidfd_send_signal    424  424  process
pidfd_open           434  434  process
mknod                133    -  process
mknodat              259   33  process
fallocate            285   47  unsupported
"""
# the newest call reviewed, both machines (the kernel's generic numbers since 5.1):
# file_setattr, Linux 6.17
NEWEST_SYSCALL = 469
_SYSCALLS = [line.split() for line in _SYSCALL_TABLE.strip().splitlines()]
_SPECIAL_SYSCALLS, _KERNEL_SYSCALLS, _PROCESS_SYSCALLS, _UNSUPPORTED_SYSCALLS = (
    {n: (int(x86), None if arm == "-" else int(arm)) for n, x86, arm, r in _SYSCALLS if r == role}
    for role in ("special", "kernel", "process", "unsupported")
)
_DENIED_SYSCALLS = {**_KERNEL_SYSCALLS, **_PROCESS_SYSCALLS}
# clone flags that make a new namespace (NEWNS, NEWCGROUP, NEWUTS, NEWIPC, NEWUSER, NEWPID,
# NEWNET; NEWTIME is 0x80)
_CLONE_NEW_NAMESPACES = 0x00020000 | 0x02000000 | 0x04000000 | 0x08000000 | 0x10000000
_CLONE_NEW_NAMESPACES |= 0x20000000 | 0x40000000 | 0x00000080
# Every run's processes get RLIMIT_CORE 1 (``child.apply``): the one value at which the kernel
# neither writes a core file nor starts core_pattern's program (on the host, as root, outside
# the run's cgroup: apport, systemd-coredump); the filter refuses any change to it.
RLIMIT_CORE = 4
# Stop signals (SIGSTOP, SIGTSTP, SIGTTIN, SIGTTOU: 19-22 on x86-64 and aarch64) are refused to
# every program: a MultiPL-E program stopped the ``timeout`` that limits it (its parent, its
# uid), ran on past its limit, printed the nonce and resumed it: scored a pass when the stop
# came before timeout armed its timer. No program scored stops a process (a stop of its own
# was one more way to wait). The calls that send a signal and where its number is (byte
# offset of the argument in seccomp_data)
_STOP_SIGNALS = (19, 22)
F_SETSIG = 10  # fcntl's command that picks the signal its I/O notifications send
_SIGNAL_ARG = (("kill", 24), ("tkill", 24), ("tgkill", 32), ("rt_sigqueueinfo", 24),
               ("rt_tgsigqueueinfo", 32))  # fmt: skip


def seccomp_filter(machine: str, pid: int | None) -> bytes | None:
    """The BPF program. With ``pid`` (the fallback's Python programs): deny every listed
    syscall (EPERM), clone without CLONE_THREAD, signals to any pid but our own. Without (the
    box's filter, for programs in any language): deny the kernel-facing calls and clone into
    new namespaces; processes and signals stay (the PID namespace bounds them). Both: clone3
    is ENOSYS (libc then uses clone, whose flags a filter can read), and so is every call
    newer than ``NEWEST_SYSCALL``; other ABIs are killed."""
    import struct

    if machine not in _ARCH:
        return None
    col, arch = _ARCH[machine]
    nr = {name: numbers[col] for name, numbers in _SPECIAL_SYSCALLS.items()}
    table = _DENIED_SYSCALLS if pid is not None else _KERNEL_SYSCALLS
    denied = [n[col] for n in table.values() if n[col] is not None]
    ld, jeq, jge, jgt, jset, ret = 0x20, 0x15, 0x35, 0x25, 0x45, 0x06
    allow, deny, nosys, kill = 0x7FFF0000, 0x00050000 | 1, 0x00050000 | 38, 0x80000000
    notsup = 0x00050000 | 95  # EOPNOTSUPP
    prog: list = [(ld, 0, 0, 4), (jeq, 0, "KILL", arch), (ld, 0, 0, 0)]
    if machine == "x86_64":
        prog.append((jge, "DENY", 0, 0x40000000))  # the x32 ABI's numbers
    prog.append((jgt, "NOSYS", 0, NEWEST_SYSCALL))  # a call newer than this table
    prog += [(jeq, "DENY", 0, n) for n in denied]
    prog += [(jeq, "NOTSUP", 0, n[col]) for n in _UNSUPPORTED_SYSCALLS.values()]
    prog += [(jeq, "NOSYS", 0, nr["clone3"]), (jeq, "CLONE", 0, nr["clone"])]
    prog += [(jeq, "SETRLIMIT", 0, nr["setrlimit"]), (jeq, "PRLIMIT", 0, nr["prlimit64"])]
    signals = dict(_SIGNAL_ARG)
    if pid is None:  # refused outright to the fallback's Python programs (a "process" call)
        nr["pidfd_send_signal"] = _PROCESS_SYSCALLS["pidfd_send_signal"][col]
        signals["pidfd_send_signal"] = 24
    prog += [(jeq, f"SIG{offset}", 0, nr[name]) for name, offset in signals.items()]
    prog += [(jeq, name.upper(), 0, nr[name]) for name in ("mmap", "memfd_create")]
    prog += [(jeq, "FCNTL", 0, nr["fcntl"]), (ret, 0, 0, allow)]
    # a stop signal (its own or another's) is refused; then (``pid``) the target is checked
    after, labels = ("SIGNAL" if pid is not None else "ALLOW"), {}
    for offset in (24, 32):
        labels[f"SIG{offset}"] = len(prog)
        prog += [(ld, 0, 0, offset), (jge, 0, after, _STOP_SIGNALS[0])]
        prog.append((jgt, after, "DENY", _STOP_SIGNALS[1]))
    labels["CLONE"] = len(prog)
    if pid is not None:
        prog += [(ld, 0, 0, 16), (jset, "ALLOW", "DENY", 0x00010000)]  # CLONE_THREAD
        labels["SIGNAL"] = len(prog)
        own = (pid, 0, (-pid) & 0xFFFFFFFF)
        prog += [
            (ld, 0, 0, 16),
            *[(jeq, "ALLOW", 0, k) for k in own[:-1]],
            (jeq, "ALLOW", "DENY", own[-1]),
        ]
    else:
        prog += [(ld, 0, 0, 16), (jset, "DENY", "ALLOW", _CLONE_NEW_NAMESPACES)]
    # fcntl(fd, F_SETSIG, sig): the kernel sends ``sig`` to the fd's owner (F_SETOWN: any pid of
    # its uid, ``timeout`` too) at each I/O; a stop signal there is refused as kill's is
    labels["FCNTL"] = len(prog)
    prog += [(ld, 0, 0, 24), (jeq, 0, "ALLOW", F_SETSIG), (ld, 0, 0, 32)]
    prog += [(jge, 0, "ALLOW", _STOP_SIGNALS[0]), (jgt, "ALLOW", "DENY", _STOP_SIGNALS[1])]
    # huge pages come from the machine's pool (``vm.nr_hugepages``), outside the run's memory
    # cgroup: a sample took it all, failing the host's own MAP_HUGETLB. None for any run
    # (MAP_HUGETLB in mmap's flags, MFD_HUGETLB in memfd_create's; shmget is refused whole)
    for label, offset, flag in (("MMAP", 40, 0x40000), ("MEMFD_CREATE", 24, 4)):
        labels[label] = len(prog)
        prog += [(ld, 0, 0, offset), (jset, "DENY", "ALLOW", flag)]
    labels["SETRLIMIT"] = len(prog)  # setrlimit(resource, new)
    prog += [(ld, 0, 0, 16), (jeq, "DENY", "ALLOW", RLIMIT_CORE)]
    labels["PRLIMIT"] = len(prog)  # prlimit64(pid, resource, new, old): new is a 64-bit pointer
    prog += [(ld, 0, 0, 24), (jeq, 0, "ALLOW", RLIMIT_CORE), (ld, 0, 0, 32), (jeq, 0, "DENY", 0)]
    prog += [(ld, 0, 0, 36), (jeq, "ALLOW", "DENY", 0)]
    rets = {"ALLOW": allow, "DENY": deny, "NOSYS": nosys, "KILL": kill, "NOTSUP": notsup}
    for name, value in rets.items():
        labels[name] = len(prog)
        prog.append((ret, 0, 0, value))
    out = []
    for i, (code, jt, jf, k) in enumerate(prog):
        jt = labels[jt] - i - 1 if isinstance(jt, str) else jt
        jf = labels[jf] - i - 1 if isinstance(jf, str) else jf
        out.append(struct.pack("HBBI", code, jt, jf, k))
    return b"".join(out)


def deny_processes_by_seccomp() -> bool:  # pragma: no cover - sandbox side
    """Install ``seccomp_filter`` on this process (and what it starts): True when in force."""
    import os

    code = seccomp_filter(os.uname().machine, os.getpid())
    return code is not None and install_seccomp(code)


def install_seccomp(code: bytes) -> bool:
    """Install the BPF program ``code`` on this process (inherited by what it starts), after
    PR_SET_NO_NEW_PRIVS: True when in force."""
    import ctypes

    class Program(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    buf = ctypes.create_string_buffer(code, len(code))
    prog = Program(len(code) // 8, ctypes.addressof(buf))
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl.argtypes = [
        ctypes.c_int,
        ctypes.c_ulong,
        ctypes.c_void_p,
        ctypes.c_ulong,
        ctypes.c_ulong,
    ]
    if libc.prctl(38, 1, None, 0, 0) != 0:  # PR_SET_NO_NEW_PRIVS
        return False
    return libc.prctl(22, 2, ctypes.addressof(prog), 0, 0) == 0  # PR_SET_SECCOMP, FILTER
