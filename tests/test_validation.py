"""The held-out loss (``data.validation_files`` / ``data.validation_fraction``,
``train.eval_every``): the training path's loss on the same batches, computed with no gradient
by the fused loss's loss-only forward; held-out samples never trained on, the same after a
relaunch and on every rank count and engine; a bad validation file or value stops in one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from reflectioncoder.kernels import fused_loss
from test_reporters import _tensorboard
from test_trainer import TINY_ARCH, tiny_config

from reflectioncoder.cli import main
from reflectioncoder.testing.cli import train_argv
from reflectioncoder.testing.toy_jsonl import write_toy_jsonl
from reflectioncoder.train.cli import done_line
from reflectioncoder.train.trainer import Trainer

QUIET = {"logging.progress": "false", "logging.report_to": "[none]", "logging.plot": "false"}


def _val_rows(out) -> list[dict]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").open()]
    return [r for r in rows if "val_loss" in r]


def test_validation_loss_is_the_training_loss_without_gradients(tmp_path, seed):
    extra = ("data.validation_fraction=0.5", "packing.max_tokens=160", "logging.tensorboard=true")
    trainer = Trainer(tiny_config(tmp_path, seed, n=12, extra=extra))
    calls = []  # (need_dh, need_dw, the model in train mode) of every fused-loss run
    real = fused_loss.run_chunks

    def recording(*args):
        calls.append((*args[4:], trainer.module.training))
        return real(*args)

    try:
        trainer.train_step()
        params = list(trainer.module.parameters())
        assert all(p.grad is None for p in params)  # the step dropped its gradients
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(fused_loss, "run_chunks", recording)
            row = trainer.validate()
        batches = list(trainer.validation_batches())
        with torch.enable_grad():  # the training path: the engine's module, with gradients
            losses = [trainer.engine(b)[0] for b in batches]
        assert all(loss.requires_grad for loss in losses)
        with_grad = sum(loss.item() for loss in losses)
        assert trainer.module.training
    finally:
        trainer.close()
    assert len(batches) >= 2 and calls == [(False, False, False)] * len(batches), calls
    assert all(p.grad is None for p in params)
    assert row["step"] == 1 and row["val_samples"] == 6
    assert row["val_loss"] == pytest.approx(with_grad, rel=1e-5)
    assert row["val_loss"] == pytest.approx(row["val_ce"] + row["val_kl"], rel=1e-6)
    assert row in _val_rows(tmp_path / "run")
    scalars, _ = _tensorboard(tmp_path / "run")  # the trackers get it as val/...
    assert scalars["val/loss"] == {1: pytest.approx(row["val_loss"], rel=1e-6)}
    assert scalars["val/samples"] == {1: 6.0} and "train/val_loss" not in scalars


def test_held_out_samples_are_never_trained_and_stay_held_out_after_resume(tmp_path, seed):
    extra = ("data.validation_fraction=0.25", "data.upsample=[2]", "checkpoint.save_every=1",
             "checkpoint.save_final=false", "train.eval_every=2")  # fmt: skip
    cfg = tiny_config(tmp_path, seed, n=16, extra=extra)
    first = Trainer(cfg)
    try:
        held = [s.uid for s in first.validation]
        trained = {first.samples[i].source for step in first.plan for i in step}
        first.train_step()
        first.save()
    finally:
        first.close()
    # 16 distinct samples, each listed twice: 4 held out, both copies of each
    assert len(held) == 8 and len({first.validation[i].source for i in range(8)}) == 4
    assert len(trained) == 12 and not trained & {s.source for s in first.validation}

    again = Trainer(cfg, resume=True)
    try:
        assert again.step == 1
        assert [s.uid for s in again.validation] == held
        assert [s.uid for s in again.samples] == [s.uid for s in first.samples]
        summary = again.train()
    finally:
        again.close()
    rows = _val_rows(tmp_path / "run")
    assert summary["val_loss"] == rows[-1]["val_loss"]
    assert f"held-out loss {rows[-1]['val_loss']:.4f}; model" in done_line(summary, cfg)
    assert again.total_steps == 6 and [r["step"] for r in rows] == [2, 4, 6]
    assert all(r["val_samples"] == 8 for r in rows)


def test_a_bad_validation_line_stops_in_one_line(tmp_path, capsys):
    data = write_toy_jsonl(tmp_path / "train.jsonl", 4, seed=0)
    rows = [json.loads(line) for line in data.read_text().splitlines()]
    rows[1]["messages"][0]["role"] = 7
    bad = tmp_path / "held.jsonl"
    bad.write_text("".join(json.dumps(r) + "\n" for r in rows))
    sets = {"data.files": f"[{data}]", "data.validation_files": f"[{bad}]",
            "checkpoint.out_dir": tmp_path / "run", "train.max_steps": 1, **QUIET}  # fmt: skip
    assert main(train_argv(sets, *[f"--set={a}" for a in TINY_ARCH])) == 1
    err = capsys.readouterr().err
    assert (
        err.startswith(f"reflectioncoder train: {bad}:2:messages[0].role: ")
        and err.count("\n") == 1
    ), err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("setting", "named"),
    [
        ({"data.validation_fraction": "1.5"}, "data.validation_fraction: must be in [0, 1)"),
        ({"train.eval_every": "-1"}, "train.eval_every: must be an int >= 0"),
        ({"train.eval_every": "5"}, "train.eval_every: no held-out data to evaluate"),
        (
            {"data.validation_fraction": "0.1", "data.validation_files": "[x.jsonl]"},
            "data.validation_fraction: give validation_files or validation_fraction, not both",
        ),
    ],
)
def test_bad_validation_settings_are_refused_in_one_line(tmp_path, capsys, setting, named):
    data = write_toy_jsonl(tmp_path / "train.jsonl", 4, seed=0)
    sets = {"data.files": f"[{data}]", "checkpoint.out_dir": tmp_path / "run", **QUIET, **setting}
    assert main(train_argv(sets)) != 0
    err = capsys.readouterr().err
    assert named in err and err.count("\n") == 1, err
    assert not (tmp_path / "run").exists()


def _launch(tmp_path, name: str, ranks: int, sets: dict) -> tuple[list[dict], str]:
    """``reflectioncoder train`` under torchrun on ``ranks`` gloo ranks: its validation rows
    and its log."""
    out = tmp_path / name
    argv = train_argv({**sets, "checkpoint.out_dir": out}, *[f"--set={a}" for a in TINY_ARCH])
    launch = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={ranks}",
              "--standalone", "-m", "reflectioncoder.cli", *argv]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(launch, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    return _val_rows(out), proc.stderr


@pytest.fixture(scope="module")
def one_rank(tmp_path_factory):
    """A run on one rank (the single engine) with held-out files evaluated every 2 steps."""
    tmp = tmp_path_factory.mktemp("validation")
    data = write_toy_jsonl(tmp / "toy.jsonl", 14, seed=11)
    held = write_toy_jsonl(tmp / "held.jsonl", 5, seed=12)
    sets = {"data.files": f"[{data}]", "data.validation_files": f"[{held}]",
            "train.seed": 11, "train.samples_per_step": 4, "train.epochs": 1,
            "train.eval_every": 2, "packing.max_tokens": 300, "checkpoint.save_final": "false",
            "model.dtype": "fp32", **QUIET}  # fmt: skip
    rows, _ = _launch(tmp, "one", 1, {**sets, "distributed.backend": "none"})
    assert [r["step"] for r in rows] == [2, 4]
    return tmp, sets, rows


@pytest.mark.slow
@pytest.mark.parametrize(
    ("engine", "says"),
    [
        ({"distributed.backend": "none"}, "DDP over 2 ranks"),
        ({"distributed.backend": "deepspeed", "distributed.zero_stage": 1}, "ZeRO-1"),
        ({"distributed.backend": "deepspeed", "distributed.zero_stage": 3}, "ZeRO-3"),
        ({"distributed.backend": "fsdp"}, "fsdp2"),
    ],
    ids=["ddp", "zero1", "zero3", "fsdp"],
)
def test_two_gloo_ranks_give_one_ranks_validation_loss(one_rank, engine, says):
    tmp, sets, want = one_rank
    name = "-".join(str(v) for v in engine.values())
    got, log = _launch(tmp, name, 2, {**sets, **engine})
    assert says in log and "validation loss" in log
    assert [r["step"] for r in got] == [2, 4]
    for one, two in zip(want, got, strict=True):
        assert (two["val_samples"], two["val_tokens"]) == (one["val_samples"], one["val_tokens"])
        for key in ("val_loss", "val_ce", "val_kl"):
            assert two[key] == pytest.approx(one[key], rel=1e-4, abs=1e-7), (name, key)
