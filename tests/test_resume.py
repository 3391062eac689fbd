"""A run killed with SIGKILL and resumed with --resume logs the same losses, step for step, as
an uninterrupted run (weights, AdamW moments, data position, masks and RNG all restored)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from reflectioncoder.config_loader import load_config
from reflectioncoder.testing.toy_jsonl import write_toy_jsonl
from reflectioncoder.train.checkpoint import list_checkpoints
from reflectioncoder.train.trainer import Trainer

ARCH = (
    "model.arch={hidden_size: 32, intermediate_size: 48, num_layers: 2, num_heads: 4, "
    "num_kv_heads: 2, max_position_embeddings: 512}"
)


def _overrides(data, out, seed: int) -> list[str]:
    return [
        ARCH,
        "model.tokenizer_vocab_size=400",
        f"data.files=[{data}]",
        f"checkpoint.out_dir={out}",
        "checkpoint.save_every=1",
        "checkpoint.keep_last=2",
        "checkpoint.save_final=false",
        f"train.seed={seed}",
        "train.epochs=6",  # 15 steps: the kill lands mid-run however late the poll sees a save
        "train.samples_per_step=4",
        "optim.lr=3e-3",
        "optim.warmup_ratio=0.2",
        "mask.strategies=[random_token_mask, block_mask]",
        "packing.max_tokens=400",
        "logging.progress=false",
        "logging.tensorboard=false",
        "logging.plot=false",
    ]


def _losses(out) -> list[tuple[int, float, float, float, float]]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").open()]
    return [(r["step"], r["loss"], r["kl"], r["grad_norm"], r["lr"]) for r in rows]


@pytest.mark.slow
def test_sigkilled_run_resumes_with_identical_losses(tmp_path, seed):
    data = write_toy_jsonl(tmp_path / "toy.jsonl", 10, seed=seed)
    full, killed = tmp_path / "full", tmp_path / "killed"

    # The killed run: a real process, SIGKILLed once a checkpoint past its first is complete
    # (not a given one: at ~0.1 s a step, a busy machine's poll can miss a save kept 2 steps).
    args = [sys.executable, "-m", "reflectioncoder.cli", "train", "--preset", "tiny"]
    for o in _overrides(data, killed, seed):
        args += ["--set", o]
    log = (tmp_path / "killed.log").open("w")
    proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ))
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        saved = list_checkpoints(killed)
        if saved and int(saved[-1].name.removeprefix("step-")) >= 2:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    log.close()
    assert proc.returncode == -signal.SIGKILL, (tmp_path / "killed.log").read_text()[-3000:]

    # The uninterrupted run, in this process.
    trainer = Trainer(load_config(base="tiny", overrides=_overrides(data, full, seed)))
    trainer.train()
    trainer.close()
    total = trainer.total_steps
    assert total == 15

    # Resume the killed run from its latest checkpoint and finish it.
    resumed = Trainer(load_config(base="tiny", overrides=_overrides(data, killed, seed)), True)
    start = resumed.step
    assert 2 <= start < total
    resumed.train()
    resumed.close()

    want, got = _losses(full), _losses(killed)
    assert [r[0] for r in got] == list(range(1, total + 1))  # killed run's extra rows dropped
    assert got == want  # bit for bit, before and after the kill
    # Only the last K checkpoints are kept.
    assert [p.name for p in list_checkpoints(killed)] == [f"step-{s:06d}" for s in (14, 15)]

    # A resume whose config plans different steps is refused, clearly.
    changed = _overrides(data, killed, seed) + ["train.samples_per_step=3"]
    with pytest.raises(ValueError, match="--resume: .* planned 15 steps"):
        Trainer(load_config(base="tiny", overrides=changed), True)
