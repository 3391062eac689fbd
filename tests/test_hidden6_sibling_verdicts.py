"""Issue 12 as a user checks it through `reflectioncoder evaluate`: each task's correct
solution keeps its pass when the sample scored beside it (same task, same run, two workers)
forks without end, kills every process it can reach, kills its parent, leaves a daemon,
ignores SIGALRM in a busy loop or aborts; libc is called through ctypes, past the guards
that replace os.fork and os.kill. Each hostile sample fails with a reason that names what
happened, one line, and the run ends in bounded time."""

import gzip
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

LIBC = "    import ctypes\n    libc = ctypes.CDLL(None)\n"
HOSTILE = [
    LIBC + "    while True:\n        libc.fork()\n",
    LIBC + "    libc.kill(-1, 9)\n",
    LIBC + "    libc.kill(libc.getppid(), 9)\n    libc.kill(1, 9)\n",
    LIBC + "    if libc.fork() == 0:\n        libc.setsid()\n        while True: pass\n",
    LIBC + "    for p in range(1, 5000):\n        libc.kill(p, 9)\n",
    LIBC + "    libc.signal(14, 1)\n    while True: pass\n",
    LIBC + "    libc.abort()\n",
    LIBC + "    while True:\n        if libc.fork() == 0:\n            libc.kill(-1, 9)\n",
]


@pytest.mark.slow
def test_hostile_siblings_change_no_correct_verdict(shared_dir, tmp_path):
    data = Path(shared_dir) / "evaldata/humanevalplus/HumanEvalPlus-v0.1.10.jsonl.gz"
    tasks = [json.loads(line) for line in gzip.open(data)][: len(HOSTILE)]
    hostile = HOSTILE[:]
    random.Random().shuffle(hostile)  # which task's sibling does what: fresh each run
    samples = tmp_path / "samples.jsonl"
    with samples.open("w") as out:
        for task, attack in zip(tasks, hostile, strict=True):
            for completion in (task["canonical_solution"], attack):
                out.write(json.dumps({"task_id": task["task_id"], "completion": completion}))
                out.write("\n")
    result = tmp_path / "result.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "reflectioncoder.cli",
            "evaluate",
            "--task",
            "humaneval",
            "--samples",
            str(samples),
            "--limit",
            str(len(tasks)),
            "--k",
            "1",
            "--json",
            str(result),
            "--no-progress",
            "--parallel",
            "2",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "REFLECTIONCODER_DEBUG": ""},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    details = json.loads(result.read_text())["details"]
    for task in tasks:
        correct, attack = sorted(details[task["task_id"]], key=lambda r: r["completion_id"])
        assert (correct["base"], correct["plus"]) == ("pass", "pass"), (task["task_id"], correct)
        assert attack["base"] in ("fail", "timeout"), attack
        assert attack["reason"] == attack["reason"].strip() and "\n" not in attack["reason"]
