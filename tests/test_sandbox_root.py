"""Least privilege whatever the caller (CI runs as root): a program in the sandbox cannot
unmount, remount or mount anything, regain privileges, see data, caches, host files or host
sockets, leave its cgroup, use more memory than its run's limit across processes, or change
another sample's verdict by hogging the CPU. Each attempt is made for real and must fail."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
from test_sandbox import _alive_with, _levels
from test_sandbox_hostile import _task

from reflectioncoder.eval import sandbox
from reflectioncoder.eval.sandbox.cgroup import cgroup_layout, remove_stale_cgroups
from reflectioncoder.eval.score import PASS, check_sample

needs_bwrap = pytest.mark.skipif(not sandbox.bwrap_works(), reason="bubblewrap cannot run here")


@pytest.fixture(params=_levels())
def level(request, monkeypatch) -> str:
    monkeypatch.setenv("REFLECTIONCODER_SANDBOX", request.param)
    return request.param


# Every escape the program tries; each entry is True only if it WORKED.
PROBE = r"""
import ctypes, json, os, socket, sys
args = json.loads(sys.stdin.read())
libc = ctypes.CDLL(None, use_errno=True)
got = {}

def attempt(name, fn):
    try:
        got[name] = bool(fn())
    except Exception:
        got[name] = False

def readable(path):
    with open(path, "rb") as f:
        return f.read(1) is not None

def writes(path):
    with open(path, "w") as f:
        f.write("pwned")
    return True

def connects(address):
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(2)
    s.connect(address)
    s.sendall(b"leak")
    return True

mounts = [line.split()[4] for line in open("/proc/self/mountinfo")]
for m in reversed(mounts):
    attempt("umount " + m, lambda m=m: libc.umount2(m.encode(), 2) == 0)  # MNT_DETACH
def remount_rw(target):  # MS_REMOUNT | MS_BIND, without MS_RDONLY
    return libc.mount(None, target.encode(), None, 32 | 4096, None) == 0
for target in ("/", "/usr", "/tmp"):
    attempt("remount rw " + target, lambda t=target: remount_rw(t))
attempt("mount tmpfs", lambda: libc.mount(b"none", b"/usr", b"tmpfs", 0, None) == 0)
attempt("mount cgroup", lambda: libc.mount(b"none", b"/tmp", b"cgroup2", 0, None) == 0)
attempt("new user namespace", lambda: libc.unshare(0x10000000) == 0)
attempt("new mount namespace", lambda: libc.unshare(0x00020000) == 0)
attempt("setuid 0", lambda: os.setuid(0) is None)
attempt("capabilities", lambda: "CapEff:\t0000000000000000" not in open("/proc/self/status").read())
for path in args["secrets"]:
    attempt("read " + path, lambda p=path: readable(p))
for path in args["dirs"]:
    attempt("list " + path, lambda p=path: os.listdir(p) is not None)
for path in args["victims"] + ["/usr/rc-pwned", "/rc-pwned", "/etc/rc-pwned"]:
    attempt("write " + path, lambda p=path: writes(p))
attempt("host unix socket", lambda: connects(args["socket"]))
attempt("host abstract socket", lambda: connects("\0" + args["abstract"]))
for path in args["cgroup_procs"] + ["/sys/fs/cgroup/cgroup.procs"]:
    attempt("leave cgroup via " + path, lambda p=path: writes(p))
print(json.dumps(got))
"""


class _Host:
    """Things on the host the program must not reach: secret files, data and cache dirs, a
    file to overwrite, a unix socket (path and abstract) that records any connection."""

    def __init__(self, base: Path, shared: Path | None) -> None:
        self.base = base
        base.mkdir()
        (base / "data").mkdir()
        (base / "cache").mkdir()
        (base / "data" / "answers.jsonl").write_text("secret")
        (base / "cache" / "expected.jsonl").write_text("secret")
        self.victim = base / "victim.txt"
        self.victim.write_text("keep")
        self.reached: list[bytes] = []
        self.servers = []
        self.abstract = f"rc-test-{uuid.uuid4().hex}"
        for address in (str(base / "host.sock"), "\0" + self.abstract):
            server = socket.socket(socket.AF_UNIX)
            server.bind(address)
            server.listen(4)
            server.settimeout(0.2)
            self.servers.append(server)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()
        layout = cgroup_layout()
        parents = sorted(set(layout.parents.values())) if layout else []
        shadow = [p for p in ("/etc/shadow", "/etc/gshadow") if os.path.exists(p)]
        self.args = {
            "secrets": [
                str(base / "data" / "answers.jsonl"),
                str(base / "cache" / "expected.jsonl"),
                *shadow,
            ],
            "dirs": [str(base / "data"), str(base / "cache"), os.path.expanduser("~/.cache")]
            + ([str(shared / "evaldata")] if shared else []),
            "victims": [str(self.victim), str(base / "new.txt")],
            "socket": str(base / "host.sock"),
            "abstract": self.abstract,
            "cgroup_procs": [str(p / "cgroup.procs") for p in parents],
        }

    def _accept(self) -> None:
        while not self.stop.is_set():
            for server in self.servers:
                try:
                    conn, _ = server.accept()
                except OSError:
                    continue
                self.reached.append(conn.recv(16) or b"connected")
                conn.close()

    def close(self) -> None:
        self.stop.set()
        self.thread.join()
        for server in self.servers:
            server.close()

    def untouched(self) -> bool:
        return (
            self.victim.read_text() == "keep"
            and not (self.base / "new.txt").exists()
            and self.reached == []
        )


def _probe(host: _Host) -> dict[str, bool]:
    res = sandbox.run_python(PROBE, stdin=json.dumps(host.args), timeout_s=20)
    assert res.ok, res.stderr[-2000:]
    return json.loads(res.stdout)


@needs_bwrap
def test_no_escape_as_root_caller(monkeypatch, tmp_path, shared_dir):
    """bwrap, started by root: every attempt fails, nothing on the host changes."""
    monkeypatch.setenv("REFLECTIONCODER_SANDBOX", "bwrap")
    host = _Host(Path("/var/tmp") / f"rc-host-{uuid.uuid4().hex}", shared_dir)
    try:
        got = _probe(host)
    finally:
        host.close()
    try:
        assert any(k.startswith("umount") for k in got) and len(got) > 20
        assert [name for name, worked in got.items() if worked] == []
        assert host.untouched()
    finally:
        shutil.rmtree(host.base)


def _interpreter_for(drop: list[str], env: dict) -> str | None:
    """An interpreter the unprivileged user can run that imports our sandbox (ours, else the
    system's: the sandbox module needs only the standard library)."""
    for python in (sys.executable, "/usr/bin/python3"):
        check = f'exec "{python}" -c "import reflectioncoder.eval.sandbox"'  # exec via a shell
        ran = subprocess.run([*drop, "/bin/sh", "-c", check], env=env, cwd="/", capture_output=True)
        if ran.returncode == 0:
            return python
    return None


@needs_bwrap
def test_no_escape_as_unprivileged_caller():
    """The same probe when the scorer itself runs as an unprivileged user."""
    setpriv = shutil.which("setpriv")
    if os.geteuid() != 0 or setpriv is None:
        pytest.skip("needs root and setpriv to become an unprivileged user")
    drop = [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", "--"]
    repo = Path(sandbox.__file__).resolve().parents[3]
    env = {**os.environ, "REFLECTIONCODER_SANDBOX": "bwrap", "PYTHONPATH": str(repo)}
    env["HOME"] = "/nonexistent"
    python = _interpreter_for(drop, env)
    if python is None:
        pytest.skip(f"uid 65534 can run no interpreter that imports {repo}/reflectioncoder")
    base = Path("/var/tmp") / f"rc-host-{uuid.uuid4().hex}"
    host = _Host(base, None)
    os.chmod(base, 0o755)
    (base / "probe.py").write_text(PROBE)
    (base / "args.json").write_text(json.dumps(host.args))
    script = (
        "import sys\nfrom reflectioncoder.eval import sandbox\n"
        "probe, args = (open(sys.argv[1] + n).read() for n in ('/probe.py', '/args.json'))\n"
        "res = sandbox.run_python(probe, stdin=args, timeout_s=20)\n"
        "print(res.isolation)\nprint(res.stdout or '{}')\nprint(res.stderr, file=sys.stderr)\n"
    )
    try:
        out = subprocess.run(
            [*drop, python, "-c", script, str(base)],
            env=env,
            cwd="/",
            text=True,
            capture_output=True,
            timeout=120,
        )
    finally:
        host.close()
    try:
        if "bubblewrap cannot run here" in out.stderr:
            pytest.skip("bubblewrap cannot run for uid 65534 here")
        assert out.returncode == 0, out.stderr[-2000:]
        level, line = out.stdout.splitlines()[:2]
        got = json.loads(line)
        assert len(got) > 20, (level, out.stderr[-2000:])
        assert [name for name, worked in got.items() if worked] == [], level
        assert host.untouched()
    finally:
        shutil.rmtree(base)


def _needs_cgroup(controller: str) -> None:
    layout = cgroup_layout()
    if layout is None or controller not in layout.parents:
        pytest.skip(f"no {controller} cgroup can be made here")


MEMORY_HOG = r"""
import os, posix, sys, time
def hold(mb):
    block = b"x" * (mb << 20)  # written, so really resident
    time.sleep(1.5)
    return len(block)
kids = []
for i in range(4):
    pid = posix.fork()
    if pid == 0:
        hold(100)
        posix._exit(0)
    kids.append(pid)
shm = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else "."
with open(os.path.join(shm, "hog"), "wb") as f:
    f.write(b"y" * (60 << 20))  # under the 64 MiB file-size limit
hold(50)
codes = [posix.waitpid(pid, 0)[1] for pid in kids]
print("all held" if not any(codes) else "killed", codes)
"""


@needs_bwrap
@pytest.mark.parametrize("memory_mb", [256, 1024])
def test_memory_is_limited_across_processes(monkeypatch, memory_mb):
    """Four children of 100 MB, 60 MB in /dev/shm and 50 MB more: over a 256 MB run limit
    something is killed; under 1024 MB all of it is held (so the limit is what stops it)."""
    _needs_cgroup("memory")
    monkeypatch.setenv("REFLECTIONCODER_SANDBOX", "bwrap")
    res = sandbox.run_python(MEMORY_HOG, timeout_s=30, memory_mb=memory_mb)
    assert not res.timed_out
    if memory_mb >= 1024:
        assert "all held" in res.stdout, res.stderr[-2000:]
    else:
        assert "all held" not in res.stdout


def _hog(token: str) -> str:
    """Twelve busy children (their command lines carry ``token``), then spin."""
    return (
        "import posix, sys\n"
        "def f(x):\n"
        "    for _ in range(12):\n"
        "        try:\n"
        "            if posix.fork() == 0:\n"
        f"                argv = [sys.executable, '-c', 'while 1: pass', '{token}']\n"
        "                posix.execv(sys.executable, argv)\n"
        "        except Exception:\n"
        "            pass\n"
        "    while True:\n"
        "        pass\n"
    )


def _heavy_honest(seed: int) -> str:
    """Right answers after ~0.3 s of CPU per input: within the 1 s limit when measured in CPU
    time, over it in wall time when a CPU hog shares the machine."""
    k, c = 2 + seed % 5, seed % 7
    loop = "    s = 0\n    for i in range(3_000_000):\n        s += i\n"
    return f"def f(x):\n{loop}    return x * {k} + {c}\n"


@pytest.mark.parametrize("level", _levels()[:1], indirect=True)  # the strongest: CI time
def test_a_hog_changes_no_other_verdict(level, seed):
    """One sample forks twelve busy loops and spins; two CPU-heavy honest samples scored beside
    it still pass (CPU-time limits, per-sample CPU quota); the hog's whole tree is gone after
    its verdict."""
    _needs_cgroup("cputime")
    task, expected = _task(seed)
    token = f"{time.time_ns() % 10**9}.625"
    results: dict[str, object] = {}

    def judge(name: str, code: str) -> None:
        results[name] = check_sample(task, code, expected)

    t0 = time.monotonic()
    threads = [
        threading.Thread(target=judge, args=("hog", _hog(token))),
        threading.Thread(target=judge, args=("honest1", _heavy_honest(seed))),
        threading.Thread(target=judge, args=("honest2", _heavy_honest(seed))),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert time.monotonic() - t0 < 120
    for name in ("honest1", "honest2"):
        r = results[name]
        assert (r.base, r.plus) == (PASS, PASS), (name, r)
    assert not results["hog"].passed_base
    assert _alive_with(token) == []


def test_stale_run_cgroups_are_swept():
    """A scorer killed before its cleanup leaves an empty run cgroup; the next one removes it
    once it is old, and leaves fresh ones (another scorer's run about to start) alone."""
    _needs_cgroup("pids")
    parent = cgroup_layout().parents["pids"]
    old, fresh = (parent / f"rc-sandbox-test-{uuid.uuid4().hex}" for _ in range(2))
    old.mkdir()
    fresh.mkdir()
    try:
        os.utime(old, (time.time() - 3600, time.time() - 3600))
        remove_stale_cgroups(cgroup_layout())
        assert not old.exists() and fresh.exists()
    finally:
        for path in (old, fresh):
            if path.exists():
                path.rmdir()
