"""SIGTERM during the steps (a preemption, scancel, a job's time limit, torchrun passing its own
on) finishes the step under way, saves a checkpoint of it, then stops as before (`terminated`,
143). It stopped mid-step: with `checkpoint.save_every: 50` a preemption at step 49 lost 49
steps, though schedulers give 10-30 s before SIGKILL. Every rank learns of it at the same step
(summed with the step's stats), so they save together, however many SIGTERMs each gets."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess

import pytest

from reflectioncoder.config_loader import load_config
from reflectioncoder.errors import Terminated, terminate_as_interrupt
from reflectioncoder.testing.live_run import start_training_launch
from reflectioncoder.testing.toy_jsonl import write_toy_jsonl
from reflectioncoder.train.checkpoint import list_checkpoints
from reflectioncoder.train.preemption import sigterm_at_step_end
from reflectioncoder.train.trainer import Trainer

ARCH = "model.arch={hidden_size: 32, intermediate_size: 48, num_layers: 2, num_heads: 4, " \
    "num_kv_heads: 2, max_position_embeddings: 512}"  # fmt: skip


def test_sigterm_is_noted_not_raised_however_many_come():
    """Slurm signals every process of the job and torchrun's agent passes its own on: two."""
    before = signal.getsignal(signal.SIGTERM)
    with sigterm_at_step_end(is_main=False) as noted:
        assert not noted()
        os.kill(os.getpid(), signal.SIGTERM)
        assert noted()
        os.kill(os.getpid(), signal.SIGTERM)
        assert noted()
    assert signal.getsignal(signal.SIGTERM) is before  # the handler before it is back


def test_sigterm_mid_step_saves_that_step_then_stops(tmp_path, monkeypatch):
    data = write_toy_jsonl(tmp_path / "toy.jsonl", 10, seed=0)
    out = tmp_path / "run"
    sets = [ARCH, "model.tokenizer_vocab_size=400", f"data.files=[{data}]",
            f"checkpoint.out_dir={out}", "checkpoint.save_every=50", "train.epochs=2",
            "train.samples_per_step=4", "logging.report_to=[none]",
            "logging.progress=false"]  # fmt: skip
    cfg = load_config(base="tiny", overrides=sets)
    trainer = Trainer(cfg)
    train_step = trainer.train_step

    def preempted_at_step_3(noted):
        if trainer.step == 2:  # during step 3: the signal comes mid-step
            os.kill(os.getpid(), signal.SIGTERM)
        return train_step(noted)

    monkeypatch.setattr(trainer, "train_step", preempted_at_step_3)
    try:
        with terminate_as_interrupt(), pytest.raises(Terminated, match="step 3 saved"):
            trainer.train()
    finally:
        trainer.close()
    assert [p.name for p in list_checkpoints(out)] == ["step-000003"]
    assert json.loads((out / "checkpoints/step-000003/trainer_state.json").read_text())["step"] == 3
    assert sum(1 for _ in (out / "metrics.jsonl").open()) == 3


@pytest.mark.slow  # a real 2-rank training run under plain torchrun: about 30 s
@pytest.mark.parametrize("every_process", [False, True])  # docker stop, k8s; Slurm
def test_a_preempted_torchrun_saves_the_step_it_reached(tmp_path, every_process):
    proc, lines = start_training_launch(
        tmp_path, nproc=2, torchrun=True, more_sets={"checkpoint.save_every": 500},
        start_new_session=True)  # fmt: skip
    out = tmp_path / "run"
    while proc.poll() is None and not (out / "metrics.jsonl").stat().st_size:
        lines.append(proc.stderr.readline())  # a step logged: the ranks are in their steps
    if every_process:  # each rank gets it, then the one torchrun passes on
        os.killpg(proc.pid, signal.SIGTERM)
    else:
        proc.send_signal(signal.SIGTERM)  # torchrun passes it on to every rank
    lines += proc.stderr.readlines()
    assert proc.wait(timeout=120) == 143, "".join(lines)
    assert lines[-1].strip() == "torchrun: terminated", "".join(lines)  # torchrun's SIGTERM
    saved = list_checkpoints(out)
    logged = sum(1 for _ in (out / "metrics.jsonl").open())
    assert [p.name for p in saved] == [f"step-{logged:06d}"], "".join(lines)
    assert any(f"SIGTERM: saved {saved[0]}; --resume continues from it" in line for line in lines)
    ranks = subprocess.run(["pgrep", "-s", str(proc.pid)], capture_output=True, text=True)
    assert not ranks.stdout.split(), "a rank outlived the launch"


@pytest.mark.slow  # a real 2-rank training run under plain torchrun: about 30 s
def test_sigterm_to_one_rank_saves_on_all_and_says_so(tmp_path):
    """A SIGTERM to one rank alone (a node's own preemption): every rank learns it at the same
    step, they save it together, and the launch's line says so; it said `rank 0 failed (killed
    by SIGTERM ...)`, naming the other rank and nothing of the save."""
    proc, lines = start_training_launch(
        tmp_path, nproc=2, torchrun=True, more_sets={"checkpoint.save_every": 500}
    )
    out = tmp_path / "run"
    while proc.poll() is None and not (out / "metrics.jsonl").stat().st_size:
        lines.append(proc.stderr.readline())
    ranks = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True)
    os.kill(int(ranks.stdout.split()[-1]), signal.SIGTERM)
    lines += proc.stderr.readlines()
    assert proc.wait(timeout=120) == 143, "".join(lines)
    saved = list_checkpoints(out)
    assert len(saved) == 1, "".join(lines)
    assert re.fullmatch(
        r"torchrun: rank [01] failed \(exit code 143; 1 other rank\(s\) failed "
        r"too\): reflectioncoder train: terminated \(step \d+ saved: --resume "
        rf"continues from {re.escape(str(saved[0]))}\)",
        lines[-1].strip(),
    ), lines
