"""Forged and flooded result lines, through the user's path (``reflectioncoder evaluate`` with
a result file): each hostile sample writes one crafted line into the result channel (every
descriptor it can reach) before the harness writes its own. Each fails by its own verdict, the
honest samples scored in the same run beside them pass as they do alone, the run ends in
seconds (no decode freezes the scorer) and the result file is written, with error text clipped."""

from __future__ import annotations

import argparse
import json
import time

import pytest

from reflectioncoder.eval.cli import add_arguments, main
from reflectioncoder.eval.tasks import load_humaneval_plus

_P = 2**61 - 1
FORGED = {
    "huge hex int in the error field": b'{"phase":"base","i":0,"error":{"$int":"'
    + b"f" * 200_000
    + b'"}}',
    "huge decimal int": b'{"phase":"base","i":' + b"9" * 200_000 + b"}",
    "an array": b"[1,2,3]",
    "a tag that decodes to an array": b'{"$tuple":[{"phase":"base","i":0,"out":1}]}',
    "not a mapping": b'"pass"',
    "an enormous allocation": b'{"phase":"base","i":0,"out":{"$ndarray":["U1000000000",["a"]]}}',
    "hash-colliding set members": json.dumps(
        {"phase": "base", "i": 0, "out": {"$set": [k * _P for k in range(1, 20_000)]}}
    ).encode(),
    "a giant load_error": b'{"phase":"base","load_error":"' + b"X" * 5_000_000 + b'"}',
    "a long load_error": b'{"phase":"base","load_error":"' + b"X" * 50_000 + b'"}',
    "deep nesting": b'{"phase":"base","i":0,"out":' + b"[" * 50_000 + b"]" * 50_000 + b"}",
    "a NaN literal": b'{"phase":"base","i":0,"out":NaN}',
}


def _forger(entry_point: str, line: bytes) -> str:
    """A completion that writes ``line`` to every descriptor it holds (the result channel is one
    of them), then defines the function (wrongly)."""
    payload = line + b"\n"
    return (
        "import os\n"
        f"_line = {payload!r}\n"
        "for _fd in range(3, 64):\n"
        "    _view = memoryview(_line)\n"
        "    try:\n"
        "        while _view:\n"
        "            _view = _view[os.write(_fd, _view):]\n"
        "    except OSError:\n"
        "        pass\n"
        f"def {entry_point}(*args):\n"
        "    return None\n"
    )


def test_forged_lines_fail_only_their_own_sample(shared_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("REFLECTIONCODER_CACHE", str(tmp_path / "cache"))
    data = shared_dir / "evaldata"
    tasks = dict(list(load_humaneval_plus(data).items())[:2])
    samples = []
    for tid, task in tasks.items():  # the honest sample of each task comes first: id 0
        samples.append({"task_id": tid, "solution": task.prompt + task.canonical_solution})
    first = next(iter(tasks.values()))
    for line in FORGED.values():
        samples.append({"task_id": first.task_id, "completion": _forger(first.entry_point, line)})
    path = tmp_path / "samples.jsonl"
    path.write_text("".join(json.dumps(s) + "\n" for s in samples))
    out = tmp_path / "result.json"
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    argv = ["--task", "humaneval", "--samples", str(path), "--data-dir", str(data), "--limit", "2"]
    t0 = time.monotonic()
    assert main(parser.parse_args([*argv, "--json", str(out), "--no-progress"])) == 0
    took = time.monotonic() - t0
    result = json.loads(out.read_text())
    for tid in tasks:
        honest = result["details"][tid][0]
        assert honest["base"] == "pass" and honest["plus"] == "pass", (tid, honest)
    hostile = result["details"][first.task_id][1:]
    assert len(hostile) == len(FORGED)
    for name, verdict in zip(FORGED, hostile, strict=True):
        assert verdict["base"] == "fail", (name, verdict)
        assert len(verdict["reason"]) < 150, (name, verdict["reason"][:200])
    # a line far over the task's expected outputs is refused before it is decoded; a shorter
    # one is decoded, and its text clipped
    giant = hostile[list(FORGED).index("a giant load_error")]
    assert giant["reason"] == "output over the cap", giant
    long = hostile[list(FORGED).index("a long load_error")]
    assert long["reason"].startswith("load error: XXX"), long
    assert out.stat().st_size < 64 << 10  # nothing forged was copied in whole
    assert took < 120, f"the run took {took:.0f} s"


@pytest.mark.parametrize("name", ["hash-colliding set members", "huge decimal int"])
def test_forged_line_costs_the_scorer_little(name):
    """The decode of a crafted line is bounded: the scorer spends well under a second on it."""
    from reflectioncoder.eval.sandbox.result_decode import read_result_row as _result_row

    t0 = time.thread_time()  # CPU time: the work is bounded, whatever the machine's load
    with pytest.raises(ValueError):
        _result_row(FORGED[name])
    assert time.thread_time() - t0 < 1.0
