"""Issue 10's `build-data --problems` on a problem file the test writes (fresh random functions,
one problem whose reference fails its tests), killed with SIGKILL once some problems are done and
run again: every good problem gives exactly one sample (none lost, none twice), the bad one is
skipped with its reason, and each sample's recorded final answer really passes the problem's
tests when run here in a fresh interpreter."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _problems(path: Path, n: int, rng: random.Random) -> dict[str, dict]:
    problems = {}
    for i in range(n):
        a, b = rng.randint(2, 9), rng.randint(1, 50)
        name = f"scale_{i}_{rng.randrange(1000)}"
        xs = rng.sample(range(-30, 30), 3)
        problems[f"p{i}"] = {
            "id": f"p{i}",
            "prompt": f"Write `{name}(x)` returning x times {a} plus {b}.",
            "tests": [f"assert {name}({x}) == {x * a + b}" for x in xs],
            "reference": f"def {name}(x):\n    return x * {a} + {b}\n",
        }
    bad = dict(problems["p0"], id="wrong_ref")
    bad["reference"] = bad["reference"].replace("+", "-")
    lines = [json.dumps(p) for p in problems.values()]
    lines.insert(rng.randrange(len(lines)), json.dumps(bad))
    path.write_text("\n".join(lines) + "\n")
    return problems


def _final_code(sample: dict) -> str:
    last = sample["messages"][-1]
    text = "".join(b["content"] for b in last["content"] if b["type"] == "text")
    (code,) = re.findall(r"```python\n(.*?)```", text, re.S)
    return code


@pytest.mark.slow  # two build-data runs, ~40 sandboxed programs: 10-60 s on the shared CPU
def test_killed_problem_run_resumes_and_its_final_answers_pass(tmp_path):
    rng = random.Random()
    problems = _problems(tmp_path / "problems.jsonl", 12, rng)
    out = tmp_path / "out.jsonl"
    cmd = [sys.executable, "-m", "reflectioncoder.cli", "build-data", "--problems"]
    cmd += [str(tmp_path / "problems.jsonl"), "--out", str(out)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    progress = tmp_path / "out.progress.jsonl"

    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    first = subprocess.Popen(cmd, cwd=REPO, env=env, start_new_session=True, **quiet)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and first.poll() is None:
        if progress.exists() and len(progress.read_text().splitlines()) >= 3:
            os.killpg(first.pid, signal.SIGKILL)
            break
        time.sleep(0.02)
    first.wait(timeout=60)
    assert first.returncode == -signal.SIGKILL, "the first run ended before it was killed"

    again = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, (again.stdout + again.stderr)[-3000:]
    report = again.stdout + again.stderr
    assert "wrong_ref: the tests fail on the reference" in report, report[-3000:]
    assert re.search(r"\(([1-9]\d*) done before\)", report), report[-3000:]

    samples = [json.loads(line) for line in out.open()]
    ids = [s["task_id"] for s in samples]
    assert sorted(ids) == sorted(problems), ids  # each good problem once, the bad one never
    for sample in samples:
        problem = problems[sample["task_id"]]
        assert sample["construct"]["final_passed"] is True, sample["construct"]
        program = _final_code(sample) + "\n" + "\n".join(problem["tests"]) + "\n"
        run = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True,
                             timeout=60)  # fmt: skip
        assert run.returncode == 0, (sample["task_id"], program, run.stderr)
