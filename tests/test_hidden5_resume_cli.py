"""Issue 23 as a user meets it: a run launched from the command line on 2 processes (gloo, the
documented `python -m reflectioncoder.launch`) resumes from its step-2 checkpoint in 1 process
(`reflectioncoder train --resume PATH`), a 1-process run resumes on 2, and a ZeRO-3 run on 2
processes resumes as ZeRO-1: every step after the
checkpoint takes the samples and tokens of an uninterrupted 1-process run of the same data, and
logs its losses within the tolerance docs/training.md states. Each part is its own process."""

from __future__ import annotations

import json
import math
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_distributed import ARCH, TOLERANCE

from reflectioncoder.testing.toy_jsonl import write_toy_jsonl

REPO = Path(__file__).resolve().parents[1]
STEPS = 4


def _overrides(data: Path, out: Path, seed: int, layout: list[str]) -> list[str]:
    sets = [
        ARCH,
        "model.tokenizer_vocab_size=400",
        f"data.files=[{data}]",
        f"checkpoint.out_dir={out}",
        "checkpoint.save_every=2",
        "checkpoint.keep_last=10",
        f"train.seed={seed}",
        f"train.max_steps={STEPS}",
        "train.samples_per_step=5",
        "optim.lr=3e-3",
        "packing.max_tokens=300",
        "logging.progress=false",
        "logging.report_to=[none]",
        "logging.plot=false",
        *layout,
    ]
    return [arg for s in sets for arg in ("--set", s)]


def _train(ranks: int, sets: list[str], resume: str | None = None) -> str:
    cli = ["train", "--preset", "tiny", *sets]
    if resume is not None:  # "": --resume alone, the newest complete checkpoint
        cli += ["--resume", resume] if resume else ["--resume"]
    if ranks == 1:
        cmd = [sys.executable, "-m", "reflectioncoder.cli", *cli]
    else:
        cmd = [sys.executable, "-m", "reflectioncoder.launch", f"--nproc_per_node={ranks}", *cli]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.setdefault("TORCH_EXTENSIONS_DIR", str(REPO / ".cache" / "torch_extensions"))
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return proc.stderr


def _by_step(out: Path) -> dict[int, dict]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").open()]
    return {r["step"]: r for r in rows if "loss" in r}


def _close(a: float, b: float, rel: float, abs_: float) -> bool:
    return math.isclose(a, b, rel_tol=rel, abs_tol=abs_)


SINGLE = ["distributed.backend=none", "distributed.zero_stage=0"]


def zero(stage: int) -> list[str]:
    return ["distributed.backend=deepspeed", f"distributed.zero_stage={stage}"]


@pytest.mark.slow  # three CLI runs, two of them on 2 processes: minutes on the shared CPU
@pytest.mark.parametrize(
    "before, after",
    [((2, zero(2)), (1, SINGLE)), ((1, SINGLE), (2, zero(1))), ((2, zero(3)), (2, zero(1)))],
    ids=["2-processes-to-1", "1-process-to-2", "zero3-to-zero1"],
)
def test_cli_run_resumes_on_another_layout(tmp_path, before, after):
    seed = random.randrange(1000)
    data = write_toy_jsonl(tmp_path / "data.jsonl", 30, seed=seed)
    reference = tmp_path / "reference"
    _train(1, _overrides(data, reference, seed, SINGLE))

    run = tmp_path / "run"
    _train(before[0], _overrides(data, run, seed, before[1]))
    checkpoint = run / "checkpoints" / "step-000002"
    assert (checkpoint / "trainer_state.json").is_file(), sorted(run.rglob("*"))
    log = _train(after[0], _overrides(data, run, seed, after[1]), resume=str(checkpoint))
    assert "converting its state" in log, log[-3000:]

    want, got = _by_step(reference), _by_step(run)
    assert sorted(got) == sorted(want) == list(range(1, STEPS + 1)), (sorted(got), sorted(want))
    for step in range(3, STEPS + 1):
        for key in ("samples", "tokens"):
            if key in want[step]:
                assert got[step][key] == want[step][key], (step, key, got[step], want[step])
        for key, rel, abs_ in TOLERANCE:
            if key in want[step]:
                assert _close(got[step][key], want[step][key], rel, abs_), (step, key)


@pytest.mark.slow  # a reference run, a 2-process run killed midway, a 1-process resume
def test_a_sigkilled_two_process_run_resumes_in_one_with_plain_resume(tmp_path):
    """The user's path: the 2-process run is killed (SIGKILL to the whole launch) after a
    checkpoint; `train --resume` (no step) in one process picks the newest complete checkpoint,
    says which, and every step of metrics.jsonl then equals the uninterrupted run's; the model
    card says which steps ran on which hardware and engine (it named the last launch's alone)."""
    seed = random.randrange(1000)
    data = write_toy_jsonl(tmp_path / "data.jsonl", 30, seed=seed)
    reference = tmp_path / "reference"
    _train(1, _overrides(data, reference, seed, SINGLE))

    run = tmp_path / "run"
    sets = _overrides(data, run, seed, zero(2)) + ["--set", "checkpoint.save_every=1"]
    cmd = [sys.executable, "-m", "reflectioncoder.launch", "--nproc_per_node=2", "train"]
    cmd += ["--preset", "tiny", *sets]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.setdefault("TORCH_EXTENSIONS_DIR", str(REPO / ".cache" / "torch_extensions"))
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    launch = subprocess.Popen(cmd, cwd=REPO, env=env, start_new_session=True, **quiet)
    deadline = time.monotonic() + 600
    while launch.poll() is None and time.monotonic() < deadline:
        if (run / "checkpoints" / "step-000002" / "COMPLETE").is_file():
            os.killpg(launch.pid, signal.SIGKILL)
            break
        time.sleep(0.05)
    launch.wait(timeout=60)
    assert launch.returncode == -signal.SIGKILL, "the 2-process run ended before it was killed"

    log = _train(1, _overrides(data, run, seed, SINGLE), resume="")
    assert "--resume: the newest complete checkpoint is" in log, log[-3000:]
    (k,) = re.findall(r"newest complete checkpoint is \S+step-0*(\d+)", log)
    card = (run / "final" / "README.md").read_text()
    (hardware,) = re.findall(r"^\| hardware \| (.+) \|$", card, re.M)
    (engine,) = re.findall(r"^\| engine \| (.+) \|$", card, re.M)
    assert re.fullmatch(rf"steps 1-{k}: 2 x CPU.*; steps {int(k) + 1}-{STEPS}: 1 x CPU.*", hardware)
    assert re.fullmatch(rf"steps 1-{k}: .*ZeRO-2.*; steps {int(k) + 1}-{STEPS}: single .*", engine)

    want, got = _by_step(reference), _by_step(run)
    assert sorted(got) == sorted(want) == list(range(1, STEPS + 1))
    for step in range(1, STEPS + 1):
        for key in ("samples", "tokens"):
            assert got[step][key] == want[step][key], (step, key)
        for key, rel, abs_ in TOLERANCE:
            assert _close(got[step][key], want[step][key], rel, abs_), (step, key)
