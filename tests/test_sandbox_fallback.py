"""The rlimits fallback (forced with REFLECTIONCODER_SANDBOX=rlimits: what runs where bubblewrap
cannot), attacked the ways the issue found it escaped, as root as in CI: ``dir_fd=`` variants
of file calls, ``_posixsubprocess.fork_exec`` and every other way to start a program,
``/proc/<pid>`` of the scorer (a secret in its environment) and of sibling samples (forged
lines written into their pipes). Each attempt fails, nothing outside the sandbox changes, and
honest samples scored beside the attacker pass."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest

from reflectioncoder.eval import sandbox
from reflectioncoder.eval.sandbox import guards
from reflectioncoder.eval.tasks import load_humaneval_plus

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def fallback(monkeypatch) -> None:
    monkeypatch.setenv("REFLECTIONCODER_SANDBOX", "rlimits")


def _run(code: str) -> sandbox.ExecResult:
    res = sandbox.run_python(textwrap.dedent(code), timeout_s=30, memory_mb=1024)
    assert res.isolation.startswith("rlimits"), res.isolation
    return res


def test_dir_fd_calls_cannot_leave_the_working_dir(fallback, tmp_path):
    victim = tmp_path / "victim"
    victim.mkdir()
    res = _run(
        f"""
        import os
        rel = {str(victim).lstrip("/")!r}
        done = []

        def attempt(name, fn):
            try:
                fn()
                done.append(name)
            except Exception:
                pass

        attempt("write inside", lambda: open("ok.txt", "w").write("honest"))
        fds = list(range(16))  # whatever the process holds, and directories it may open
        for path, flags in [("/", os.O_RDONLY), ("/", os.O_RDONLY | os.O_DIRECTORY),
                            ("/", os.O_PATH), ("/proc/self/cwd", os.O_RDONLY),
                            (".", os.O_RDONLY), ("..", os.O_RDONLY), ("/proc/self/root", 0)]:
            try:
                fds.append(os.open(path, flags))
                done.append("directory descriptor " + path)
            except OSError:
                pass
        os.makedirs("d/e/f/g/h/i/j/k/l/m/n/o/p/q/r/s", exist_ok=True)
        for fd in fds:
            flags = os.O_WRONLY | os.O_CREAT
            attempt("open", lambda: os.close(os.open(rel + "/a", flags, dir_fd=fd)))
            attempt("mkdir", lambda: os.mkdir(rel + "/b", dir_fd=fd))
            attempt("symlink", lambda: os.symlink("/etc", rel + "/c", dir_fd=fd))
            attempt("rename", lambda: os.rename("ok.txt", rel + "/d", dst_dir_fd=fd))
            attempt("link", lambda: os.link("ok.txt", rel + "/e", dst_dir_fd=fd))
        # a relative symlink whose target climbs out from the link's own directory
        up = "../" * 40
        attempt("relative symlink", lambda: os.symlink(up + rel, "d/e/f/escape"))
        attempt("write through it", lambda: open("d/e/f/escape/f", "w").write("x"))
        print(sorted(done))
        """
    )
    assert res.exit_code == 0, res.stderr
    assert res.stdout.strip() == "['write inside']", res.stdout
    assert list(victim.iterdir()) == []


def test_no_new_process_by_any_path(fallback, tmp_path):
    marker = tmp_path / "started"
    touch = ["/usr/bin/env", "touch", str(marker)]
    res = _run(
        f"""
        import importlib.util, os, sys, threading, time
        touch = {touch!r}
        tried = []

        def attempt(name, fn):
            try:
                fn()
                tried.append(name + ": ran")
            except BaseException as exc:
                tried.append(name + ": " + type(exc).__name__)

        def fork_exec(module):
            r, w = os.pipe()
            return module.fork_exec(
                touch, [touch[0].encode()], True, (w,), None, None, -1, -1, -1, -1, -1, -1,
                r, w, False, False, -1, None, None, None, -1, None, True)

        import _posixsubprocess
        attempt("fork_exec", lambda: fork_exec(_posixsubprocess))

        def fresh():
            spec = importlib.util.find_spec("_posixsubprocess")
            return fork_exec(importlib.util.module_from_spec(spec))

        attempt("fresh fork_exec module", fresh)

        def reimport():
            del sys.modules["_posixsubprocess"]
            try:
                import _posixsubprocess as again
            finally:
                sys.modules["_posixsubprocess"] = _posixsubprocess
            return fork_exec(again)

        attempt("re-imported fork_exec", reimport)
        import posix
        attempt("os.fork", lambda: os.fork() or os._exit(0))
        attempt("posix.fork", lambda: posix.fork() or os._exit(0))
        attempt("posix_spawn", lambda: os.posix_spawn(touch[0], touch, {{}}))
        attempt("spawnv", lambda: os.spawnv(os.P_WAIT, touch[0], touch))
        attempt("system", lambda: os.system(" ".join(touch)))
        attempt("popen", lambda: os.popen(" ".join(touch)).read())
        import subprocess
        attempt("subprocess", lambda: subprocess.run(touch))
        import multiprocessing
        attempt("multiprocessing", lambda: multiprocessing.Process(target=print).start())
        import pty
        attempt("pty.fork", lambda: pty.fork()[0] or os._exit(0))
        attempt("ctypes", lambda: __import__("ctypes").CDLL(None).fork())
        t = threading.Thread(target=lambda: tried.append("thread: ran"))
        t.start()
        t.join()
        attempt("execv", lambda: os.execv(touch[0], touch))
        time.sleep(0.3)
        print("\\n".join(tried))
        """
    )
    assert res.exit_code == 0, res.stderr
    ran = [line for line in res.stdout.splitlines() if line.endswith(": ran")]
    assert ran == ["thread: ran"], res.stdout  # threads work; no process started
    assert not marker.exists()


def test_seccomp_filter_holds_without_the_audit_hook(tmp_path):
    """The kernel-level layer alone (native code steps around an audit hook): after the filter,
    fork, the original fork_exec and signals to other processes fail; threads still run."""
    if not sandbox.seccomp_available():
        pytest.skip("no seccomp filter for this machine")
    marker = tmp_path / "started"
    code = f"""
        import os, threading, _posixsubprocess
        from reflectioncoder.eval.sandbox import guards
        assert guards.deny_processes_by_seccomp()
        out = []
        for name, fn in [
            ("fork", os.fork),
            ("fork_exec", lambda: _posixsubprocess.fork_exec(
                ["/usr/bin/touch", {str(marker)!r}], [b"/usr/bin/touch"], True, (), None, None,
                -1, -1, -1, -1, -1, -1, *os.pipe(), False, False, -1, None, None, None, -1,
                None, True)),
            ("kill 1", lambda: os.kill(1, 0)),
            ("kill parent", lambda: os.kill(os.getppid(), 0)),
        ]:
            try:
                fn()
                out.append(name + " ran")
            except OSError as exc:
                out.append(name + " " + str(exc.errno))
        t = threading.Thread(target=lambda: out.append("thread ran"))
        t.start(); t.join()
        os.kill(os.getpid(), 0)
        print(";".join(out))
    """
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "fork 1;fork_exec 1;kill 1 1;kill parent 1;thread ran"
    assert not marker.exists()


def test_seccomp_program_is_well_formed():
    for machine in ("x86_64", "aarch64"):
        code = guards.seccomp_filter(machine, 4242)
        assert code is not None and len(code) % 8 == 0 and len(code) // 8 < 256
    assert guards.seccomp_filter("sparc", 1) is None
    gaps = " ".join(sandbox.not_guaranteed("rlimits"))
    assert ("no seccomp here" in gaps) == (not sandbox.seccomp_available())
    assert "not Python" in " ".join(sandbox.not_guaranteed("rlimits", python_only=False))
    assert sandbox.not_guaranteed("bwrap(uid=65534)", python_only=False) == []


SPY = r"""
import os, re
secret_hits = []
if os.environ.get("RC_TEST_SECRET"):
    secret_hits.append("env:" + os.environ["RC_TEST_SECRET"])
forged = b'{"phase":"base","i":0,"error":"ForgedBySibling"}\n'
writes = 0
for _ in range(30):  # ~3 s: the siblings scored beside it are running
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        for leaf in ("environ", "cmdline", "mem"):
            try:
                fd = os.open(f"/proc/{pid}/{leaf}", os.O_RDONLY)
            except OSError:
                continue
            try:
                data = os.read(fd, 1 << 20)
            except OSError:
                continue
            finally:
                os.close(fd)
            at = data.find(b"RC_TEST_SECRET=")
            if at >= 0:
                secret_hits.append(data[at + 15 : at + 47].decode(errors="replace"))
        try:
            names = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            names = [str(n) for n in range(3, 12)]
        try:
            dir_fd = os.open(f"/proc/{pid}/fd", os.O_RDONLY)
        except OSError:
            dir_fd = None
        for name in names:
            for kw in ({}, {"dir_fd": dir_fd}):
                try:
                    path = name if kw.get("dir_fd") is not None else f"/proc/{pid}/fd/{name}"
                    fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK, **kw)
                except OSError:
                    continue
                try:
                    os.write(fd, forged)
                    writes += 1
                except OSError:
                    pass
                finally:
                    os.close(fd)
        if dir_fd is not None:
            os.close(dir_fd)
    __import__("time").sleep(0.1)
leak = re.sub(r"\W", "_", "|".join(secret_hits))[:90]
raise type(f"Spy_w{writes}_{leak}", (Exception,), {})()
"""


@pytest.fixture(scope="module")
def spied_run(tmp_path_factory):
    """``reflectioncoder evaluate`` in a process of its own whose environment holds a secret,
    forced to the fallback, scoring two tasks' honest solutions beside the spy above."""
    shared = Path(os.environ.get("REFLECTIONCODER_SHARED", ROOT.parent / "shared"))
    if not (shared / "evaldata").is_dir():
        pytest.skip("../shared/evaldata not found")
    tmp = tmp_path_factory.mktemp("spied")
    tasks = dict(list(load_humaneval_plus(shared / "evaldata").items())[:2])
    samples = [
        {"task_id": tid, "solution": t.prompt + t.canonical_solution}
        for tid, t in tasks.items()
        for _ in range(2)
    ]
    samples.append({"task_id": next(iter(tasks)), "completion": SPY})
    (tmp / "samples.jsonl").write_text("".join(json.dumps(s) + "\n" for s in samples))
    secret = uuid.uuid4().hex
    env = {
        **os.environ,
        "RC_TEST_SECRET": secret,
        "REFLECTIONCODER_SANDBOX": "rlimits",
        "REFLECTIONCODER_CACHE": str(tmp / "cache"),
        "OMP_NUM_THREADS": "1",
    }
    argv = [sys.executable, "-m", "reflectioncoder.cli", "evaluate", "--task", "humaneval"]
    argv += ["--samples", str(tmp / "samples.jsonl"), "--data-dir", str(shared / "evaldata")]
    argv += ["--limit", "2", "--parallel", "2", "--json", str(tmp / "r.json"), "--no-progress"]
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return secret, (tmp / "r.json").read_text(), tasks


def test_scorer_secret_stays_out_of_the_result(spied_run):
    secret, text, tasks = spied_run
    result = json.loads(text)
    assert result["isolation"].startswith("rlimits")
    spy = result["details"][next(iter(tasks))][-1]
    assert spy["base"] == "fail" and spy["reason"].startswith("load error: Spy_w"), spy
    assert secret not in text
    assert result["not_guaranteed"], "the fallback lists what it cannot promise"


def test_siblings_pipes_cannot_be_written(spied_run):
    _, text, tasks = spied_run
    result = json.loads(text)
    spy = result["details"][next(iter(tasks))][-1]
    assert spy["reason"].startswith("load error: Spy_w0_"), spy  # no write got through
    for tid in tasks:
        for verdict in result["details"][tid][:2]:
            assert verdict["base"] == "pass" and verdict["plus"] == "pass", (tid, verdict)
