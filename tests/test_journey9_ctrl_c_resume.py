"""Ctrl-C during ``train`` says where the same command with ``--resume`` continues: it said
``reflectioncoder train: interrupted`` alone, and a user who stopped a long run had to run
``reflectioncoder runs OUT`` to learn whether any step was kept (a Ctrl-C during a save keeps
the checkpoint before it, not the one being written)."""

from __future__ import annotations

from reflectioncoder.cli import main
from reflectioncoder.testing.cli import ONE_STEP, train_argv
from reflectioncoder.testing.toy_jsonl import write_toy_jsonl
from reflectioncoder.train.trainer import Trainer


def _ctrl_c_at_step(monkeypatch, stop_at: int) -> None:
    """The terminal's Ctrl-C arriving during optimizer step ``stop_at`` (from 1)."""
    real_step = Trainer.train_step
    calls = []

    def step(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == stop_at:
            raise KeyboardInterrupt
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "train_step", step)


def _train(tmp_path, save_every: int) -> list[str]:
    data = write_toy_jsonl(tmp_path / "d.jsonl", 8, seed=1)
    sets = {**ONE_STEP, "train.max_steps": 4, "train.samples_per_step": 2}
    sets |= {"model.tokenizer_vocab_size": 300, "data.files": f"[{data}]"}
    sets |= {"checkpoint.out_dir": tmp_path / "run", "checkpoint.save_every": save_every}
    return train_argv(sets, "--no-progress")


def test_ctrl_c_names_the_checkpoint_resume_continues_from(tmp_path, monkeypatch, capsys):
    _ctrl_c_at_step(monkeypatch, 3)
    assert main(_train(tmp_path, save_every=2)) == 130
    step = tmp_path / "run" / "checkpoints" / "step-000002"
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"reflectioncoder train: interrupted; --resume continues from {step}"
    )


def test_ctrl_c_before_any_checkpoint_says_resume_starts_over(tmp_path, monkeypatch, capsys):
    _ctrl_c_at_step(monkeypatch, 2)
    assert main(_train(tmp_path, save_every=3)) == 130
    assert capsys.readouterr().err.splitlines()[-1] == (
        "reflectioncoder train: interrupted; --resume: no resumable checkpoint (a resumed run "
        "starts from step 0)"
    )
