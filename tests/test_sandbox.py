"""The sandbox's own behaviour (run_python, the API construct/ uses), at every isolation level
this machine offers: output, tracebacks, stdin, limits, timeouts, caps, cleanup."""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

import pytest

from reflectioncoder.eval import sandbox


def _levels() -> list[str]:
    levels = ["rlimits"]
    if sandbox.bwrap_works():
        levels.insert(0, "bwrap")
    return levels


@pytest.fixture(params=_levels())
def level(request, monkeypatch) -> str:
    monkeypatch.setenv("REFLECTIONCODER_SANDBOX", request.param)
    return request.param


def _alive_with(token: str) -> list[int]:
    """PIDs on this machine whose command line contains ``token``."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if token.encode() in Path(f"/proc/{entry}/cmdline").read_bytes():
                    found.append(int(entry))
            except OSError:
                pass
    return found


def test_prints_and_exit_code(level, seed):
    a, b = seed % 1000, (seed // 1000) % 1000
    res = sandbox.run_python(f"print({a} + {b})\nimport sys\nsys.exit(3)")
    assert res.stdout == f"{a + b}\n"
    assert res.exit_code == 3 and not res.timed_out and not res.ok
    assert res.isolation.startswith(level)


def test_traceback_names_the_program(level):
    res = sandbox.run_python("def f(x):\n    assert x > 1, 'too small'\n\nf(0)\n")
    assert res.exit_code == 1
    assert 'File "main.py", line 4, in <module>' in res.stderr
    assert 'File "main.py", line 2, in f' in res.stderr
    assert "AssertionError: too small" in res.stderr
    assert "runner.py" not in res.stderr  # feedback shows only the program's own frames


def test_stdin_reaches_the_program(level, seed):
    words = [uuid.uuid4().hex[:6] for _ in range(3)]
    res = sandbox.run_python(
        "import sys\nprint(sys.stdin.read().split()[::-1])", stdin=" ".join(words)
    )
    assert res.ok and res.stdout.strip() == str(words[::-1])


def test_timeout_kills_from_outside(level):
    t0 = time.monotonic()
    res = sandbox.run_python(
        "import signal\nfor s in (signal.SIGTERM, signal.SIGINT, signal.SIGALRM):\n"
        "    signal.signal(s, signal.SIG_IGN)\nwhile True:\n    pass\n",
        timeout_s=1.0,
    )
    assert res.timed_out and res.exit_code is None and not res.ok
    assert time.monotonic() - t0 < 10


def test_output_is_capped(level):
    res = sandbox.run_python("while True:\n    print('y' * 10000)\n", timeout_s=20)
    assert res.output_truncated and res.exit_code is None
    assert len(res.stdout) <= 64 << 10
    assert not res.timed_out  # killed for the flood, long before the wall clock


def test_memory_limit(level):
    res = sandbox.run_python("x = bytearray(2 << 30)\nprint('allocated')", memory_mb=256)
    assert res.exit_code != 0 and "allocated" not in res.stdout
    assert "MemoryError" in res.stderr


def test_setsid_child_does_not_outlive_the_run(level):
    token = f"{time.time_ns() % 10**9}.25"
    res = sandbox.run_python(
        "import os\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        f"    os.execv('/bin/sleep', ['sleep', '{token}'])\n"
        "print('parent done')\n",
        timeout_s=5,
    )
    # the fallback level refuses the fork itself; either way nothing may be left running
    assert res.timed_out is False
    assert _alive_with(token) == []


def test_writes_stay_inside(level, tmp_path):
    victim = Path("/var/tmp") / f"rc-victim-{uuid.uuid4().hex}"
    victim.write_text("keep")
    try:
        res = sandbox.run_python(
            "import os\n"
            "open('inside.txt', 'w').write('ok')\n"
            "print(open('inside.txt').read())\n"
            f"for act in (lambda: open({str(victim)!r}, 'w').write('pwned'),\n"
            f"            lambda: os.remove({str(victim)!r})):\n"
            "    try:\n"
            "        act()\n"
            "    except OSError as e:\n"
            "        print('refused', type(e).__name__)\n"
        )
        assert res.stdout.startswith("ok\n") and res.stdout.count("refused") == 2
        assert victim.read_text() == "keep"
    finally:
        victim.unlink()


def test_bad_arguments():
    with pytest.raises(TypeError, match="source"):
        sandbox.run_python(b"print(1)")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="timeout_s"):
        sandbox.run_python("print(1)", timeout_s=0)
    with pytest.raises(ValueError, match="memory_mb"):
        sandbox.run_python("print(1)", memory_mb=-1)


def test_bad_level_named(monkeypatch):
    monkeypatch.setenv("REFLECTIONCODER_SANDBOX", "docker")
    with pytest.raises(ValueError, match="REFLECTIONCODER_SANDBOX"):
        sandbox.isolation_level()


def test_prepared_run_is_single_use(level, seed):
    token = f"{time.time_ns() % 10**9}.125"
    box = sandbox.PreparedRun(
        ["/bin/sh", "-c", f"read x; echo got $x; exec sleep {token}"], cpu_s=5
    )
    res = box.run(f"{seed}\n", timeout_s=1.0)
    assert res.stdout == f"got {seed}\n" and res.timed_out
    assert _alive_with(token) == []
    with pytest.raises(RuntimeError, match="once"):
        box.run("again\n")
    box.discard()  # idempotent
    unused = sandbox.PreparedRun(["/bin/sh", "-c", f"exec sleep {token}"], cpu_s=5)
    unused.discard()
    assert _alive_with(token) == []


def test_program_gets_a_plain_sigint_from_a_pool_thread(level):
    # Pool threads hold SIGINT (errors.ctrl_c_to_main_thread) and the sandbox holds it while
    # forking (a Ctrl-C in the fork window printed a traceback): the program itself must start
    # with SIGINT neither blocked nor ignored.
    from concurrent.futures import ThreadPoolExecutor

    from reflectioncoder.errors import ctrl_c_to_main_thread

    code = (
        "fields = dict(l.split(':\\t') for l in open('/proc/self/status').read().splitlines()"
        " if ':\\t' in l)\nprint(int(fields['SigBlk'], 16) & 2, int(fields['SigIgn'], 16) & 2)"
    )
    with ThreadPoolExecutor(1, initializer=ctrl_c_to_main_thread) as pool:
        res = pool.submit(sandbox.run_python, code).result()
    assert res.stdout == "0 0\n", res


def test_a_big_scorer_starts_children_through_a_fresh_interpreter(level, monkeypatch):
    """A scorer holding much memory (MBPP+'s expected outputs: 1.7 GB) starts each child through
    child.py in a fresh interpreter (vfork + exec: no page tables copied) instead of a fork; the
    program gets the same set-up: SIGINT plain, the per-process limits, the run's cgroup (its CPU
    is counted), the seccomp filter."""
    import subprocess
    from concurrent.futures import ThreadPoolExecutor

    from reflectioncoder.errors import ctrl_c_to_main_thread
    from reflectioncoder.eval.sandbox import spawn

    monkeypatch.setattr(spawn, "_FORK_RSS", 0)
    started: list[list[str]] = []
    real_popen = subprocess.Popen

    def spy(cmd, *args, **kwargs):
        started.append(list(cmd))
        return real_popen(cmd, *args, **kwargs)

    monkeypatch.setattr(subprocess, "Popen", spy)
    code = (
        "import resource, socket\n"
        "fields = dict(l.split(':\\t') for l in open('/proc/self/status').read().splitlines()"
        " if ':\\t' in l)\n"
        "try:\n    socket.socket(socket.AF_UNIX)\n    sock = 'opened'\n"
        "except OSError:\n    sock = 'refused'\n"
        "print(int(fields['SigBlk'], 16) & 2, int(fields['SigIgn'], 16) & 2,"
        " resource.getrlimit(resource.RLIMIT_AS)[0] >> 20, sock)\n"
        "sum(range(3_000_000))\n"
    )
    with ThreadPoolExecutor(1, initializer=ctrl_c_to_main_thread) as pool:
        res = pool.submit(sandbox.run_python, code, memory_mb=300).result()
    assert any("child.py" in " ".join(cmd) for cmd in started), started
    assert res.stdout == "0 0 300 refused\n", res
    if res.cpu_time_s is not None:  # the run's cgroup counted the program's CPU
        assert res.cpu_time_s > 0.01, res
