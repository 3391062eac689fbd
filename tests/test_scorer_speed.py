"""What the scorer's speed rests on, checked for what it must not change: the box's JSON
through json's C accelerator (the bytes json writes, the values it reads), a box that starts
without json's Python modules, re or the guarded modules (yet patches them when a program
imports them), the expected outputs' lazy plus phase (equal to decoding the whole line), the
costliest samples first, and the run's CPU clock read through a kept descriptor."""

from __future__ import annotations

import json
import random

import pytest
from test_eval_score import _random_value, _same
from test_sandbox import _levels

from reflectioncoder.eval import score as sc
from reflectioncoder.eval.expected import LazyOutputs, _task_row
from reflectioncoder.eval.judge import Phase
from reflectioncoder.eval.sandbox import PreparedRun, codec, result_decode
from reflectioncoder.eval.tasks import PythonTask


@pytest.fixture(params=_levels())
def level(request, monkeypatch) -> str:
    monkeypatch.setenv("REFLECTIONCODER_SANDBOX", request.param)
    return request.param


def test_box_json_is_jsons(seed):
    rng = random.Random(seed)
    for _ in range(300):
        encoded = codec.encode(_random_value(rng))
        text = codec.dumps(encoded)
        assert text == json.dumps(encoded, separators=(",", ":"))
        assert _same(codec.loads_row(text), codec.loads_row(json.dumps(encoded)))
        assert _same(
            codec.loads_row(f" {text}\n".encode()), json.loads(text, object_hook=codec.tag_hook)
        )
    for bad in ("", "[1,", '{"a": 1} 2', "nul", b"\xff"):
        with pytest.raises(codec.DecodeError):
            codec.loads_row(bad)


def _task(entry="f") -> PythonTask:
    return PythonTask("Speed/0", "", entry, "", [[1]], [[2]], 0.0, "humaneval")


def _out(code: str) -> object:
    """What ``f(1)`` returned in the box (through the real scorer's job and runner)."""
    rows: list = []
    box = sc.prepare_harness()
    try:
        phase = Phase("base", _task(), [[1]], {"out": [None], "t": [0.0]})
        job, inputs = sc.job_lines(_task(), [phase], code, hide=[])
        box.run(
            job + b"".join(inputs),  # all at once: the runner reads the inputs when it needs them
            on_stdout_line=lambda line: rows.append(result_decode.read_result_row(line)) and False,
        )
    finally:
        box.discard()
    outs = [r["out"] for r in rows if "out" in r]
    assert len(outs) == 1, rows
    return outs[0]


def test_box_starts_light_and_still_guards(level):
    loaded = "def f(x):\n    import sys\n    return sorted(m for m in %r if m in sys.modules)\n"
    heavy = ("re", "json", "enum", "functools", "collections", "subprocess", "shutil", "signal")
    assert _out(loaded % (heavy,)) == []
    # EvalPlus's guard still holds for a program that imports them, however it does
    guarded = (
        "import subprocess\nfrom shutil import rmtree, move\nimport shutil\n"
        "def f(x):\n"
        "    return [subprocess.Popen, rmtree, move, shutil.chown, shutil.copy is None]\n"
    )
    assert _out(guarded) == [None, None, None, None, False]
    late = (
        "def f(x):\n    import importlib\n    return importlib.import_module('subprocess').Popen\n"
    )
    assert _out(late) is None


def test_outputs_decoded_when_first_read(seed):
    rng = random.Random(seed)
    phases = {
        p: {"out": [_random_value(rng) for _ in range(5)], "t": [rng.random() for _ in range(5)]}
        for p in ("base", "plus")
    }
    encoded = {p: {k: codec.encode(v) for k, v in ph.items()} for p, ph in phases.items()}
    line = (json.dumps({"task_id": "T/0", **encoded}) + "\n").encode()  # as expected.py writes
    row = _task_row(line)
    for name in ("base", "plus"):
        lazy = row[name]
        assert isinstance(lazy, LazyOutputs) and "out" not in dict(lazy)
        assert _same(lazy["t"], phases[name]["t"])
        assert _same(lazy["out"], phases[name]["out"]) and sorted(lazy) == ["out", "t"]
    odd = json.dumps({"task_id": "T/0", "plus": encoded["plus"], "base": encoded["base"]})
    assert _same(_task_row(odd.encode()), phases)  # another shape: decoded whole
    keys = {"$dict": [['"plus": {"out": ', ', "t": '], ['"base": {"out": ', 1]]}
    tricky = {p: {"out": [keys], "t": [0.5]} for p in ("base", "plus")}  # keys inside strings
    row = _task_row(json.dumps({"task_id": "T/1", **tricky}).encode())
    assert _same(row["plus"]["out"], [result_decode.decode(keys)]) and row["base"]["t"] == [0.5]


def test_costliest_samples_first(monkeypatch, seed):
    rng = random.Random(seed)
    costs = [rng.random() for _ in range(6)]
    tasks = {f"T/{i}": _task() for i in range(6)}
    expected = {
        f"T/{i}": {"base": {"out": [1], "t": [c]}, "plus": {"out": [2], "t": [c]}}
        for i, c in enumerate(costs)
    }
    seen: list[str] = []

    def record(task, code, exp, **kw):
        seen.append(next(t for t, e in expected.items() if e is exp))
        return sc.SampleResult(task.task_id, kw["completion_id"], sc.PASS, sc.PASS)

    monkeypatch.setattr(sc, "check_sample", record)
    monkeypatch.setattr(sc, "prepare_harness", lambda hide=(): _Unused())
    samples = [{"task_id": t, "solution": "def f(x): pass"} for t in tasks]
    sc.score_python_samples(tasks, samples, expected, parallel=1)
    assert seen == sorted(tasks, key=lambda t: -costs[int(t[2:])])


class _Unused:
    def discard(self) -> None:
        pass


def test_cpu_clock_counts_the_run(level):
    box = PreparedRun(["python3", "-c", "import sys; sys.stdin.read(); sum(range(3 * 10**7))"])
    if box.cgroup is None or box.cpu_time_s() is None:
        box.discard()
        pytest.skip("no cgroup counts CPU time here")
    before = box.cpu_time_s()
    res = box.run(b"go", timeout_s=60, cpu_s=30)
    assert res.exit_code == 0
    assert res.cpu_time_s is not None and res.cpu_time_s > 0.1 and before < 0.1
