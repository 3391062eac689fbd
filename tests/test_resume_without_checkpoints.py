"""--resume into a finished run that saved no checkpoint (``checkpoint.save_every: 0``) is
refused in one line, touching nothing: it warned 'no checkpoint; starting
from step 0', cut metrics.jsonl to nothing at once and trained the whole run again over its
final model (a requeued job, a resume-always script)."""

from __future__ import annotations

from test_trainer import tiny_config

from reflectioncoder.cli import main
from reflectioncoder.testing.cli import train_argv
from reflectioncoder.train.trainer import Trainer


def _finished(cfg):
    trainer = Trainer(cfg)
    try:
        trainer.train()
    finally:
        trainer.close()
    return cfg


def test_resuming_a_finished_run_without_checkpoints_is_refused(tmp_path, seed, capsys):
    cfg = _finished(tiny_config(tmp_path, seed, extra=("train.max_steps=2",)))
    out = tmp_path / "run"
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and p.name != ".lock"}
    assert (out / "final" / "config.json").is_file() and (out / "metrics.jsonl").stat().st_size
    sets = {"data.files": f"[{cfg.data.files[0]}]", "checkpoint.out_dir": out}
    sets.update({"checkpoint.save_every": 0, "train.max_steps": 2})
    assert main(train_argv(sets, "--resume", "--no-progress")) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--resume" in err[0] and "no checkpoint" in err[0], err
    after = {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and p.name != ".lock"}
    assert after == before


def test_resuming_a_killed_run_without_checkpoints_starts_over(tmp_path, seed):
    """No final model either: nothing was finished, so it starts from step 0 (as before)."""
    cfg = _finished(tiny_config(tmp_path, seed, extra=("checkpoint.save_final=false",)))
    again = Trainer(cfg, resume=True)
    again.close()
    assert again.step == 0
