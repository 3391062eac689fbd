"""The host kernel and devices, as root (CI's case): a program in the box cannot write a
sysctl (``core_pattern`` included), ``/proc/sysrq-trigger`` or any other kernel file, cannot
chmod or chown a device node, finds no writable file on any mount but its own scratch, and is
refused sockets of every family, tracing, mounts, new namespaces, keys, perf events, io_uring,
modules and kexec by the box's seccomp filter. Every attempt is harmless if it worked (it
writes back the value already there, chmods to the mode already set, opens without writing)
and is reported, so the test can fail."""

from __future__ import annotations

import json
import os
import shutil
import sys
import uuid
from pathlib import Path

import pytest
from test_sandbox import _levels
from test_sandbox_root import _Host

from reflectioncoder.eval import multiple, sandbox

needs_bwrap = pytest.mark.skipif(not sandbox.bwrap_works(), reason="bubblewrap cannot run here")


@pytest.fixture(params=_levels())
def level(request, monkeypatch) -> str:
    monkeypatch.setenv("REFLECTIONCODER_SANDBOX", request.param)
    return request.param


# Each entry of the result is what WORKED (the test wants none). Python, standard library only.
KERNEL_PROBE = r"""
import json, os, stat, sys
worked = []

def attempt(name, fn):
    try:
        fn()
        worked.append(name)
    except OSError:
        pass

def write_back(path):  # the value it already has: harmless if the write goes through
    with open(path, "rb") as f:
        value = f.read()
    with open(path, "wb", buffering=0) as f:
        f.write(value)

for path in ("/proc/sys/fs/lease-break-time", "/proc/sys/kernel/core_pattern",
             "/proc/sys/kernel/hostname", "/proc/sys/vm/drop_caches"):
    attempt("sysctl " + path, lambda p=path: write_back(p))
# opened for writing only, never written (a write would act on the machine)
for path in ("/proc/sysrq-trigger", "/proc/sys/kernel/sysrq", "/proc/kcore", "/proc/kmsg"):
    attempt("open for writing " + path, lambda p=path: os.close(os.open(p, os.O_WRONLY)))

def device_nodes():
    for root, dirs, files in os.walk("/dev"):
        for name in dirs + files:
            path = os.path.join(root, name)
            mode = os.lstat(path).st_mode
            if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
                yield path, mode

nodes = list(device_nodes())
for path, mode in nodes:
    attempt("chmod " + path, lambda p=path, m=mode: os.chmod(p, stat.S_IMODE(m)))
    st = os.lstat(path)
    attempt("chown " + path, lambda p=path, s=st: os.chown(p, s.st_uid, s.st_gid))

# every mount: what could this uid write? (its scratch, its own /proc entries and the
# harmless character devices aside)
scratch = ("/tmp", "/dev/shm", "/dev/pts", "/proc/self", "/proc/thread-self")
harmless = {"/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom", "/dev/tty",
            "/dev/ptmx", "/dev/pts/ptmx"}
mounts = sorted({line.split()[4] for line in open("/proc/self/mountinfo")})

def own_process(path):  # the box has its own PID namespace: every /proc/<pid> is the box's
    parts = path.split("/")
    return len(parts) > 2 and parts[1] == "proc" and parts[2].isdigit()

writable, seen, walked = [], 0, set()
for mount in mounts:
    if any(mount == s or mount.startswith(s + "/") for s in scratch):
        continue
    for root, dirs, files in os.walk(mount):
        if own_process(root) or root.startswith(scratch):
            dirs[:] = []
            continue
        if root in walked:  # a mount inside a mount: walked once
            dirs[:] = []
            continue
        walked.add(root)
        for name in dirs + files:
            path = os.path.join(root, name)
            if path in harmless or path.startswith(scratch) or own_process(path):
                continue
            if os.path.islink(path):  # links are 0777; where they lead is walked itself
                continue
            seen += 1
            if os.access(path, os.W_OK):
                writable.append(path)
print(json.dumps({"worked": worked, "writable": writable[:50], "files": seen,
                  "nodes": len(nodes), "mounts": mounts}))
"""


def _python_probe(code: str, ro_binds=(), **kw) -> sandbox.ExecResult:
    return sandbox.run_sandboxed(
        [sys.executable, "-I", "-S", "{src}/probe.py"],
        files={"probe.py": code},
        ro_binds=ro_binds,
        timeout_s=120,
        memory_mb=1024,
        output_limit=4 << 20,
        **kw,
    )


def _report(res: sandbox.ExecResult) -> dict:
    assert res.exit_code == 0, res.stderr[-3000:]
    return json.loads(res.stdout)


@pytest.mark.skipif(os.geteuid() != 0, reason="the doors are root's: run as root (CI does)")
@needs_bwrap
def test_no_kernel_or_device_write_as_root(monkeypatch):
    monkeypatch.setenv("REFLECTIONCODER_SANDBOX", "bwrap")
    got = _report(_python_probe(KERNEL_PROBE))
    assert got["nodes"] >= 5 and got["files"] > 1000 and "/proc" in got["mounts"], got
    assert got["worked"] == [], got["worked"]
    assert got["writable"] == [], got["writable"]


def _languages_with_binds() -> list[str]:
    return [lang for lang in multiple.available_languages() if multiple.toolchain_env(lang)[1]]


@pytest.mark.slow  # walks every mount once per language that binds toolchain paths
@pytest.mark.skipif(os.geteuid() != 0, reason="the doors are root's: run as root (CI does)")
@needs_bwrap
@pytest.mark.parametrize("language", _languages_with_binds())
def test_no_writable_file_with_a_toolchain_bound(monkeypatch, language):
    """The same walk with each language's toolchain binds mounted."""
    monkeypatch.setenv("REFLECTIONCODER_SANDBOX", "bwrap")
    env, binds = multiple.toolchain_env(language)
    got = _report(_python_probe(KERNEL_PROBE, ro_binds=binds, env=env))
    assert got["worked"] == [] and got["writable"] == [], got


SHELL_PROBE = r"""
for f in /proc/sys/kernel/core_pattern /proc/sys/fs/lease-break-time; do
  v=$(cat $f); (printf '%s\n' "$v" > $f) 2>/dev/null && echo "WORKED sysctl $f"
done
for d in /dev/* /dev/pts/*; do
  if [ -c "$d" ] || [ -b "$d" ]; then
    m=$(stat -c %a "$d"); chmod "$m" "$d" 2>/dev/null && echo "WORKED chmod $d"
  fi
done
echo probed
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="the doors are root's: run as root (CI does)")
@needs_bwrap
def test_shell_sample_cannot_write_sysctls_or_devices(monkeypatch):
    """A MultiPL-E shell sample, through the language's own command line. (The fallback level
    runs programs as the caller: as root it does not hold, and says so in the docs.)"""
    monkeypatch.setenv("REFLECTIONCODER_SANDBOX", "bwrap")
    if multiple.toolchain_problem("sh"):
        pytest.skip("bash not available")
    res = multiple.run_program("sh", SHELL_PROBE)
    assert "probed" in res.stdout, res.stderr
    assert "WORKED" not in res.stdout, res.stdout


# Syscalls the box's seccomp filter refuses, each of which an unprivileged process may
# otherwise make (so the filter is what stops it); errno of each, or "ok".
SYSCALL_PROBE = r"""
import ctypes, errno, json, os, socket, sys
libc = ctypes.CDLL(None, use_errno=True)
args = json.loads(sys.stdin.read())
got = {}

def attempt(name, fn):
    try:
        result = fn()
        got[name] = "ok" if result is None or result >= 0 else errno.errorcode[ctypes.get_errno()]
    except OSError as exc:
        got[name] = errno.errorcode.get(exc.errno, str(exc.errno))

def connect(family, address, kind=socket.SOCK_STREAM):
    s = socket.socket(family, kind)
    s.settimeout(2)
    s.connect(address)
    s.sendall(b"leak")

attempt("unix socket to a bound path", lambda: connect(socket.AF_UNIX, args["socket"]))
attempt("abstract unix socket", lambda: connect(socket.AF_UNIX, "\0" + args["abstract"]))
attempt("tcp socket", lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM).close())
attempt("raw socket", lambda: socket.socket(socket.AF_INET, socket.SOCK_RAW, 1).close())
attempt("packet socket", lambda: socket.socket(socket.AF_PACKET, socket.SOCK_RAW).close())
attempt("netlink socket", lambda: socket.socket(socket.AF_NETLINK, socket.SOCK_RAW).close())
nr = {"ptrace": 101, "unshare": 272, "keyctl": 250, "add_key": 248, "perf_event_open": 298,
      "init_module": 175, "finit_module": 313, "kexec_load": 246, "io_uring_setup": 425,
      "bpf": 321, "mount": 165, "setns": 308, "clone3": 435}
attempt("ptrace", lambda: libc.syscall(nr["ptrace"], 0, 0, 0, 0))  # PTRACE_TRACEME
attempt("unshare user", lambda: libc.syscall(nr["unshare"], 0x10000000))
attempt("unshare net", lambda: libc.syscall(nr["unshare"], 0x40000000))
attempt("keyctl", lambda: libc.syscall(nr["keyctl"], 0, -3, 0))  # GET_KEYRING_ID session
attempt("add_key", lambda: libc.syscall(nr["add_key"], b"user", b"rc", b"x", 1, -3))
attr = (ctypes.c_uint32 * 32)(1, 128, 0)  # PERF_TYPE_SOFTWARE, size, CPU_CLOCK
attempt("perf_event_open", lambda: libc.syscall(nr["perf_event_open"], attr, 0, -1, -1, 0))
attempt("init_module", lambda: libc.syscall(nr["init_module"], None, 0, b""))
attempt("finit_module", lambda: libc.syscall(nr["finit_module"], 0, b"", 0))
attempt("kexec_load", lambda: libc.syscall(nr["kexec_load"], 0, 0, None, 0))
params = (ctypes.c_uint32 * 30)()
attempt("io_uring_setup", lambda: libc.syscall(nr["io_uring_setup"], 4, params))
attempt("bpf", lambda: libc.syscall(nr["bpf"], 0, None, 0))
attempt("mount", lambda: libc.syscall(nr["mount"], b"none", b"/tmp", b"tmpfs", 0, None))
attempt("clone3", lambda: libc.syscall(nr["clone3"], None, 0))
attempt("fork (allowed)", lambda: os.waitpid(os.fork() or os._exit(0), 0) and None)
print(json.dumps(got))
"""


def test_seccomp_refuses_sockets_and_kernel_calls(level):
    """At every level: each refused call fails with EPERM (ENOSYS for clone3, which libc
    replaces with clone), while fork still works (compilers need it)."""
    base = Path("/var/tmp") / f"rc-sock-{uuid.uuid4().hex}"
    host = _Host(base, None)  # a unix socket in a directory the box binds, and an abstract one
    os.chmod(base, 0o755)
    os.chmod(host.args["socket"], 0o777)  # only the filter may stop the box's uid
    try:
        stdin = json.dumps({"socket": host.args["socket"], "abstract": host.abstract})
        res = _python_probe(SYSCALL_PROBE, ro_binds=[str(base)], stdin=stdin)
    finally:
        host.close()
        shutil.rmtree(base)
    got = _report(res)
    assert got.pop("fork (allowed)") == "ok"
    assert got.pop("clone3") == "ENOSYS"
    assert {name: e for name, e in got.items() if e != "EPERM"} == {}, got
    assert len(got) >= 17
    assert host.reached == []
