"""A run that stopped before its first step (an error in the first forward, an out-of-memory,
Ctrl-C or a kill during it) left config.yaml, tokenizer/ and an empty metrics.jsonl, and the
same command was then refused: 'already holds a run (metrics.jsonl)'. Now such a folder starts
again, by the same command or with --resume (from step 0); one with a logged step, a
checkpoint or a final model is refused as before, its files untouched. Each launch is a real
`reflectioncoder train` process, as a user relaunches it."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_distributed import ARCH

from reflectioncoder.testing.cli import ctrl_c_reaches, train_argv
from reflectioncoder.testing.toy_jsonl import write_toy_jsonl

# `train` with the step broken as the test says (argv[1]), then the CLI's own argv.
PATCHED_TRAIN = """
import sys, time
from pathlib import Path
from reflectioncoder.train.loss_module import ReflectionLossModule
from reflectioncoder.train.trainer import Trainer
how, sys.argv = sys.argv[1], sys.argv[:1] + sys.argv[2:]
forward, train_step = ReflectionLossModule.forward, Trainer.train_step
def broken_forward(self, *args, **kwargs):
    if how == "oom":
        raise RuntimeError("CUDA out of memory. Tried to allocate 20.00 GiB")
    Path(how).write_text("in the first forward")  # the test stops the process now
    time.sleep(300)
def second_step_fails(self, *args):  # Trainer.train passes sigterm_noted
    if self.step >= 1:
        raise RuntimeError("CUDA out of memory. Tried to allocate 20.00 GiB")
    return train_step(self, *args)
if how == "second":
    Trainer.train_step = second_step_fails
else:
    ReflectionLossModule.forward = broken_forward
from reflectioncoder.cli import main
sys.exit(main())
"""


def _argv(tmp_path: Path, *flags: str) -> list[str]:
    data = tmp_path / "toy.jsonl"
    if not data.exists():
        write_toy_jsonl(data, 8, seed=0)
    sets = {"model.tokenizer_vocab_size": 400, "data.files": f"[{data}]"}
    sets |= dict([ARCH.split("=", 1)]) | {"checkpoint.out_dir": tmp_path / "run"}
    sets |= {"train.max_steps": 2, "train.samples_per_step": 2, "packing.max_tokens": 400}
    sets |= {"logging.report_to": "[none]", "checkpoint.save_every": 0}
    return train_argv(sets, "--no-progress", *flags)


def _train(argv: list[str], how: str | None = None) -> subprocess.CompletedProcess:
    head = [sys.executable, "-m", "reflectioncoder.cli"]
    if how is not None:
        head = [sys.executable, "-c", PATCHED_TRAIN, how]
    return subprocess.run(head + argv, capture_output=True, text=True, timeout=300)


def _folder(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in out.rglob("*") if p.is_file()}


def _check_starts_again(tmp_path: Path, flags: tuple[str, ...]) -> None:
    out = tmp_path / "run"
    names = sorted(p.name for p in out.iterdir())
    # an error in the steps keeps its traceback in logs/ (the one line names the file)
    assert names in (
        [".lock", "config.yaml", "metrics.jsonl", "tokenizer"],
        [".lock", "config.yaml", "logs", "metrics.jsonl", "tokenizer"],
    ), names
    again = _train(_argv(tmp_path, *flags))
    assert again.returncode == 0, again.stderr[-3000:]
    said = {
        (): f"{out}: its run stopped before its first step (no checkpoint, no metrics row): "
        "starting it again (config.yaml and tokenizer/ are rewritten)",
        ("--resume",): f"--resume: no checkpoint in {out}; starting from step 0",
    }[flags]
    assert said in again.stderr
    assert "done: 2 of 2 steps" in again.stderr
    rows = (out / "metrics.jsonl").read_text().splitlines()
    assert [r.split(",")[0] for r in rows] == ['{"step": 1', '{"step": 2']
    assert (out / "final" / "config.json").is_file()


@pytest.mark.parametrize("flags", [(), ("--resume",)])
def test_a_run_whose_first_forward_failed_starts_again(tmp_path, flags):
    failed = _train(_argv(tmp_path), how="oom")
    assert failed.returncode == 1
    assert "CUDA out of memory" in failed.stderr.splitlines()[-1]
    assert (tmp_path / "run" / "logs" / "traceback-rank-0.txt").is_file()
    _check_starts_again(tmp_path, flags)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
def test_a_run_stopped_during_its_first_step_starts_again(tmp_path, sig):
    marker = tmp_path / "in-forward"
    head = [sys.executable, "-c", PATCHED_TRAIN, str(marker)]
    with (tmp_path / "first.log").open("w") as log:
        proc = subprocess.Popen(
            head + _argv(tmp_path), stdout=log, stderr=subprocess.STDOUT, preexec_fn=ctrl_c_reaches
        )
        deadline = time.monotonic() + 240
        while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        proc.send_signal(sig)
        proc.wait(timeout=120)
    assert marker.exists(), (tmp_path / "first.log").read_text()[-3000:]
    assert proc.returncode in (130, -sig), (tmp_path / "first.log").read_text()[-3000:]
    _check_starts_again(tmp_path, ())


def test_a_run_with_a_logged_step_is_refused_and_left_as_it_was(tmp_path):
    failed = _train(_argv(tmp_path), how="second")  # step 1 logged, no checkpoint saved
    assert failed.returncode == 1, failed.stderr[-3000:]
    out = tmp_path / "run"
    before = _folder(out)
    assert before["metrics.jsonl"].count(b"\n") == 1
    again = _train(_argv(tmp_path))
    assert again.returncode == 1
    assert again.stderr.strip().splitlines()[-1] == (
        f"reflectioncoder train: checkpoint.out_dir: {out} already holds a run (metrics.jsonl); "
        "pass --resume to continue it or --overwrite to start over (deletes it)"
    )
    assert _folder(out) == before
