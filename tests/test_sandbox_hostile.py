"""Hostile completions, scored through the real scorer (check_sample) at every isolation level
available: each is contained, scored as a failure, the scorer survives, no file outside the
sandbox changes and no process of the sample outlives its verdict. An honest completion of the
same task passes (so these tests can fail)."""

from __future__ import annotations

import shutil
import socket
import threading
import time
import uuid
from pathlib import Path

import pytest
from test_sandbox import _alive_with, _levels

from reflectioncoder.eval import sandbox
from reflectioncoder.eval.score import FAIL, PASS, TIMEOUT, check_sample
from reflectioncoder.eval.tasks import PythonTask


@pytest.fixture(params=_levels())
def level(request, monkeypatch) -> str:
    monkeypatch.setenv("REFLECTIONCODER_SANDBOX", request.param)
    return request.param


def _task(seed: int) -> tuple[PythonTask, dict]:
    """f(x) = x * k + c on one base and two plus inputs; expected outputs computed here."""
    k, c = 2 + seed % 5, seed % 7
    xs = [3 + seed % 11, 20 + seed % 13, 40 + seed % 17]  # distinct: tests slow one input
    task = PythonTask(
        task_id="Hostile/0",
        prompt="",
        entry_point="f",
        canonical_solution=f"def f(x):\n    return x * {k} + {c}\n",
        base_inputs=[[xs[0]]],
        plus_inputs=[[xs[1]], [xs[2]]],
        atol=0.0,
        dataset="humaneval",
    )
    expected = {
        "base": {"out": [xs[0] * k + c], "t": [0.0]},
        "plus": {"out": [x * k + c for x in xs[1:]], "t": [0.0, 0.0]},
    }
    return task, expected


# The longest a verdict may take: the wall-clock backstop of this task's CPU budget (8 CPU
# seconds: 3 inputs of 1 s, EvalPlus's per-phase slack), reached only when the machine is so
# loaded that the sample gets less than a sixth of a core; plus start-up.
VERDICT_WITHIN_S = sandbox.wall_backstop(8.0) + 10.0


def _judge(level: str, seed: int, code: str, *, limit_s: float = VERDICT_WITHIN_S):
    task, expected = _task(seed)
    t0 = time.monotonic()
    res = check_sample(task, code, expected)
    took = time.monotonic() - t0
    assert took < limit_s, f"{level}: the verdict took {took:.1f} s"
    return res


WRONG = "    return x * 1000 + 1\n"


def test_honest_completion_passes(level, seed):
    task, _ = _task(seed)
    res = _judge(level, seed, task.canonical_solution)
    assert res.base == PASS and res.plus == PASS, res.reason


def test_infinite_loop(level, seed):
    res = _judge(level, seed, "def f(x):\n    while True:\n        pass\n")
    assert res.base == TIMEOUT


def test_ignores_the_timer_signals(level, seed):
    code = (
        "import signal\n"
        "def f(x):\n"
        "    for s in (signal.SIGALRM, signal.SIGPROF, signal.SIGVTALRM):\n"
        "        signal.signal(s, signal.SIG_IGN)\n"
        "    signal.setitimer = lambda *a: None\n"
        "    while True:\n"
        "        pass\n"
    )
    res = _judge(level, seed, code)  # the cgroup's CPU clock ends it from outside
    assert res.base in (TIMEOUT, FAIL) and not res.passed_base


@pytest.mark.parametrize("seconds", [1.3, 2.0])
def test_catching_the_timer_gains_nothing(level, seed, seconds):
    """Right answers, each after ``seconds`` of CPU against a 1 s limit: the completion catches
    the harness's timer exception and carries on. The scorer's own clock (the run's CPU time
    between result lines) times it out; EvalPlus 0.3.1 would pass it."""
    task, _ = _task(seed)
    body = task.canonical_solution.split("return", 1)[1].strip()
    code = (
        "import time\n"
        "def f(x):\n"
        "    start = time.process_time()\n"
        "    while True:\n"
        "        try:\n"
        f"            while time.process_time() - start < {seconds}:\n"
        "                pass\n"
        f"            return {body}\n"
        "        except BaseException:\n"
        "            pass\n"
    )
    res = _judge(level, seed, code)
    assert res.base == TIMEOUT and res.base_failed_input == 0, res
    assert res.reason == "over its CPU-time limit, measured outside", res


def test_fork_bomb(level, seed):
    token = f"{time.time_ns() % 10**9}.5"
    code = (
        "import posix\n"
        "def f(x):\n"
        "    while True:\n"
        "        try:\n"
        "            if posix.fork() == 0:\n"
        "                posix.fork()\n"
        f"                posix.execv('/bin/sleep', ['sleep', '{token}'])\n"
        "        except Exception:\n"
        "            pass\n"
    )
    res = _judge(level, seed, code)
    assert not res.passed_base
    assert _alive_with(token) == []


def test_setsid_child_outliving_parent(level, seed):
    token = f"{time.time_ns() % 10**9}.75"
    code = (
        "import posix\n"
        "def f(x):\n"
        "    try:\n"
        "        if posix.fork() == 0:\n"
        "            posix.setsid()\n"
        f"            posix.execv('/bin/sleep', ['sleep', '{token}'])\n"
        "    except Exception:\n"
        "        pass\n" + WRONG
    )
    res = _judge(level, seed, code)
    assert res.base == FAIL
    assert _alive_with(token) == []


def test_memory_bomb(level, seed):
    code = (
        "def f(x):\n    blocks = []\n    while True:\n        blocks.append(bytearray(1 << 28))\n"
    )
    res = _judge(level, seed, code)
    assert not res.passed_base


def test_one_gigabyte_write(level, seed):
    code = (
        "import io\n"
        "def f(x):\n"
        "    with io.open('big.bin', 'wb') as fh:\n"
        "        for _ in range(1024):\n"
        "            fh.write(b'0' * (1 << 20))\n"
        "    return x\n"
    )
    res = _judge(level, seed, code)
    assert not res.passed_base


def test_write_and_delete_outside(level, seed):
    victim = Path("/var/tmp") / f"rc-victim-{uuid.uuid4().hex}"
    created = Path("/var/tmp") / f"rc-new-{uuid.uuid4().hex}"
    victim.write_text("keep")
    code = (
        "import io, posix\n"
        "def f(x):\n"
        "    try:\n"
        f"        io.open({str(victim)!r}, 'w').write('pwned')\n"
        "    except Exception:\n"
        "        pass\n"
        "    try:\n"
        f"        io.open({str(created)!r}, 'w').write('pwned')\n"
        "    except Exception:\n"
        "        pass\n"
        "    try:\n"
        f"        posix.unlink({str(victim)!r})\n"
        "    except Exception:\n"
        "        pass\n" + WRONG
    )
    try:
        res = _judge(level, seed, code)
        assert res.base == FAIL
        assert victim.read_text() == "keep"
        assert not created.exists()
    finally:
        victim.unlink(missing_ok=True)
        created.unlink(missing_ok=True)


def test_network_connection(level, seed):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(0.5)
    port = server.getsockname()[1]
    got: list[bytes] = []

    def accept() -> None:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            got.append(conn.recv(100) or b"connected")
            conn.close()

    stop = threading.Event()
    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    code = (
        "import socket\n"
        "def f(x):\n"
        "    try:\n"
        f"        socket.create_connection(('127.0.0.1', {port}), timeout=2).sendall(b'leak')\n"
        "    except Exception:\n"
        "        pass\n" + WRONG
    )
    try:
        res = _judge(level, seed, code)
    finally:
        stop.set()
        thread.join()
        server.close()
    assert res.base == FAIL
    assert got == []


def test_reads_the_expected_outputs(level, seed, monkeypatch):
    """The cache of expected outputs (and the data) are out of the program's sight."""
    task, expected = _task(seed)
    cache = Path("/var/tmp") / f"rc-cache-{uuid.uuid4().hex}"  # outside the private /tmp
    (cache / "eval").mkdir(parents=True)
    request_cleanup = shutil.rmtree
    secret = cache / "eval" / "answers.txt"
    secret.write_text(str(expected["base"]["out"][0]))
    monkeypatch.setenv("REFLECTIONCODER_CACHE", str(cache))
    code = (
        "import io\n"
        "def f(x):\n"
        "    try:\n"
        f"        return int(io.open({str(secret)!r}).read())\n"
        "    except Exception:\n"
        "        return -1\n"
    )
    try:
        assert _judge(level, seed, code).base == FAIL
    finally:
        request_cleanup(cache)


def test_kills_its_parent(level, seed):
    code = (
        "import posix\n"
        "def f(x):\n"
        "    for target in (posix.getppid(), -posix.getpgid(posix.getppid())):\n"
        "        try:\n"
        "            posix.kill(target, 9)\n"
        "        except Exception:\n"
        "            pass\n" + WRONG
    )
    res = _judge(level, seed, code)  # this test process is the scorer: it is still here
    assert res.base == FAIL


@pytest.mark.parametrize("exit_call", ["import sys\nsys.exit(0)", "import os\nos._exit(0)"])
def test_exit_before_the_tests(level, seed, exit_call):
    task, _ = _task(seed)
    res = _judge(level, seed, exit_call + "\n" + task.canonical_solution)
    assert res.base == FAIL


def test_prints_success_lines(level, seed):
    forged = b'{"phase":"base","done":true}\n{"phase":"plus","done":true}\n'
    code = (
        "import posix\n"
        "print('pass'); print('All tests passed'); print('{\"base\": \"pass\"}')\n"
        "for fd in range(0, 16):\n"
        "    try:\n"
        f"        posix.write(fd, {forged!r})\n"
        "    except OSError:\n"
        "        pass\n"
        "def f(x):\n"
        "    print('pass')\n" + WRONG
    )
    res = _judge(level, seed, code)
    assert res.base == FAIL


@pytest.mark.parametrize(
    "code",
    [
        "class A:\n    def __eq__(self, o):\n        return True\n    __hash__ = object.__hash__\n"
        "def f(x):\n    return A()\n",
        "class B(int):\n    def __eq__(self, o):\n        return True\n"
        "    __hash__ = int.__hash__\ndef f(x):\n    return B(-1)\n",
        "class C(list):\n    def __eq__(self, o):\n        return True\n"
        "def f(x):\n    return C()\n",
    ],
    ids=["object", "int-subclass", "list-subclass"],
)
def test_rigged_eq(level, seed, code):
    assert _judge(level, seed, code).base == FAIL


def test_patched_helpers(level, seed):
    code = (
        "import math, operator, builtins, json\n"
        "math.isclose = lambda *a, **k: True\n"
        "operator.eq = lambda a, b: True\n"
        'json.dumps = lambda *a, **k: \'{"phase": "base", "done": true}\'\n'
        "try:\n"
        "    import numpy\n"
        "    numpy.allclose = lambda *a, **k: True\n"
        "except ImportError:\n"
        "    pass\n"
        "def f(x):\n"
        "    return float(x) * 1000.5\n"
    )
    assert _judge(level, seed, code).base == FAIL


def test_numpy_imports_and_the_guard_stays(level, seed):
    """numpy's import calls os.putenv, which the guard removes: EvalPlus imported numpy before
    its guard, so a completion's numpy works there; here the import is lent putenv, and the
    completion still finds it None afterwards."""
    pytest.importorskip("numpy")
    task, _ = _task(seed)
    code = task.canonical_solution + (
        "_f = f\n"
        "def f(x):\n"
        "    import os\n    import numpy as np\n"
        "    assert os.putenv is None\n"
        "    return int(np.int64(_f(x)))\n"
    )
    assert _judge(level, seed, code).base == PASS


@pytest.mark.parametrize(
    "body",
    [
        "    while True:\n        print('x' * 10000)\n",
        "    import posix\n    while True:\n        posix.write(1, b'x' * 65536)\n",
        "    import posix\n    for fd in range(3, 10):\n        try:\n"
        "            while True:\n                posix.write(fd, b'x' * 65536)\n"
        "        except OSError:\n            pass\n",
    ],
    ids=["print", "fd1", "result-channel"],
)
def test_floods_stdout(level, seed, body):
    res = _judge(level, seed, "def f(x):\n" + body)
    assert not res.passed_base


def test_levels_report_themselves(level):
    assert sandbox.isolation_level().startswith(level)
