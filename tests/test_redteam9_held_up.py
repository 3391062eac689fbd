"""Red team, round 9: a sample that holds the scorer up gets an honest sibling timed out.

Each sample's result lines are read and decoded by a scorer thread, and every scorer thread
shares the interpreter's lock: decoding one long line (a hostile HumanEval/130 sample may send
up to 64 MiB, its cap) holds every other thread for seconds. Meanwhile an honest sibling that
had said "loaded" waited for its plus inputs, which its (held) thread could not send, and its
judge counted that wall time as the sample's own: "waiting, not computing, past its time
limit" (measured: HumanEval/139's canonical solution beside such a sample, 2 runs in 2 timed
out, held 7.6-9.2 s with 0.01-0.23 s of CPU; alone it passes). Now the judge, asked every
50 ms by the scorer's thread, takes the time that thread was held up out of the step under way,
and a batch of lines read after a hold-up is checked against its inputs' limits together (the
program computed them meanwhile; its own timer still bounds each).
"""

from __future__ import annotations

import gzip
import json

import pytest

from reflectioncoder.eval import judge as judge_mod
from reflectioncoder.eval.judge import Judge, Phase
from reflectioncoder.eval.tasks import PythonTask


def _task() -> PythonTask:
    return PythonTask("Held/0", "", "f", "", [[1]], [[2]], 0.0, "humaneval")


class _Clocks:
    """The scorer's wall clock and the run's CPU clock, moved by the test."""

    def __init__(self) -> None:
        self.wall = self.cpu = 100.0

    def tick(self, wall: float, cpu: float = 0.0) -> None:
        self.wall += wall
        self.cpu += cpu


@pytest.fixture
def clocks(monkeypatch) -> _Clocks:
    clocks = _Clocks()
    monkeypatch.setattr(judge_mod.time, "monotonic", lambda: clocks.wall)
    return clocks


def _loaded_judge(clocks: _Clocks, n: int = 50) -> tuple[Judge, Phase]:
    phase = Phase("base", _task(), [[i] for i in range(n)], {"out": [0] * n, "t": [0.0] * n})
    judge = Judge([phase], lambda: clocks.cpu, 1 << 20)
    assert judge(b'{"phase": "base", "loaded": true}') == b""
    return judge, phase


def _ticks(judge: Judge, clocks: _Clocks, seconds: float, cpu_share: float = 1.0) -> bool:
    """The scorer's thread asking the watchdog every 50 ms for ``seconds``."""
    for _ in range(round(seconds / 0.05)):
        clocks.tick(0.05, 0.05 * cpu_share)
        if judge.stalled():
            return True
    return False


def test_time_the_scorer_was_held_up_is_not_the_samples(clocks):
    judge, phase = _loaded_judge(clocks)
    assert not _ticks(judge, clocks, 0.5)
    clocks.tick(8.0, 0.01)  # the scorer held up 8 s: no line read, no input sent
    assert not judge.stalled(), phase.reason  # before: "waiting, not computing"
    assert not _ticks(judge, clocks, 0.5)
    assert phase.status is None


def test_a_sample_that_waits_is_still_stopped(clocks):
    judge, phase = _loaded_judge(clocks)
    assert _ticks(judge, clocks, 4.0, cpu_share=0.0)  # 2 x 1 s + 1 s, then stopped
    assert phase.reason == "waiting, not computing, past its time limit"


def _lines(first: int, last: int) -> list[bytes]:
    return [b'{"phase": "base", "i": %d, "out": 0}' % i for i in range(first, last)]


def test_a_batch_read_after_a_hold_up_is_checked_against_its_inputs(clocks):
    judge, phase = _loaded_judge(clocks)
    for line in _lines(0, 1):
        assert judge(line) is False
    clocks.tick(3.0, 3.0)  # held up while the program computed inputs 1-29 (0.1 s each)
    for line in _lines(1, 30):
        assert judge(line) is False
    clocks.tick(0.1, 0.1)
    assert judge(_lines(30, 31)[0]) is False, phase.reason  # before: over its CPU-time limit
    assert phase.status is None


def test_a_program_over_its_inputs_limit_is_still_stopped(clocks):
    """Without a hold-up the rules are as before: an input that runs past its limit (a program
    that catches its timer) is stopped at its limit, measured outside."""
    judge, phase = _loaded_judge(clocks)
    assert judge(_lines(0, 1)[0]) is False
    assert _ticks(judge, clocks, 1.25)
    assert phase.reason == "over its CPU-time limit, measured outside"


HOSTILE = """    return 0

import fcntl, os, time
_t = time.process_time()
while time.process_time() - _t < 0.3:
    pass
_line = b'{"phase":"base","i":0,"out":[' + b'0,' * 30000000 + b'0]}\\n'
for _fd in range(3, 32):
    try:
        if fcntl.fcntl(_fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_WRONLY:
            os.write(_fd, _line)
    except OSError:
        pass
"""


@pytest.mark.slow  # scores HumanEval/139's plus inputs (3.6 s of CPU) beside a 60 MB line
def test_an_honest_sample_beside_a_long_line_passes(shared_dir):
    from reflectioncoder.eval.expected import expected_outputs
    from reflectioncoder.eval.score import score_python_samples
    from reflectioncoder.eval.tasks import dataset_file, file_hash, load_humaneval_plus

    data = shared_dir / "evaldata"
    path = dataset_file(data, "humanevalplus/HumanEvalPlus-v0.1.10.jsonl.gz")
    tasks = load_humaneval_plus(data)
    with gzip.open(path, "rt") as f:
        canonical = {r["task_id"]: r["canonical_solution"] for r in map(json.loads, f)}
    samples = [
        {"task_id": "HumanEval/139", "completion": canonical["HumanEval/139"]},
        {"task_id": "HumanEval/130", "completion": HOSTILE},
    ]
    need = {s["task_id"]: tasks[s["task_id"]] for s in samples}
    results = score_python_samples(need, samples, expected_outputs(need, file_hash(path)))
    honest = next(r for r in results if r.task_id == "HumanEval/139")
    assert honest.reason == "", honest  # before: waiting, not computing, past its time limit
