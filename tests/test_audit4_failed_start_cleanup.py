"""A tracker that cannot start (W&B online without an API key, an MLflow server down) stopped
`train` with 'UsageError: No API key configured ... (an internal error)' after the run folder
was written: config.yaml, tokenizer/ and an empty metrics.jsonl stayed, and the same command
then found 'already holds a run (metrics.jsonl)'. Now the line names the tracker, and a fresh
start that fails removes only what it added (issue 11: a run folder written only once the run
starts; issue 23: trackers)."""

from __future__ import annotations

import pytest
from test_distributed import ARCH

from reflectioncoder.cli import main
from reflectioncoder.testing.cli import train_argv
from reflectioncoder.testing.toy_jsonl import write_toy_jsonl
from reflectioncoder.train import reporters


class _NoKey(Exception):
    pass


def _refusing(*args, **kwargs):
    raise _NoKey("No API key configured.\nUse `wandb login` to log in.")


@pytest.mark.parametrize("existing", [False, True])
def test_a_tracker_that_cannot_start_is_one_line_and_the_folder_is_left_as_it_was(
    tmp_path, capsys, monkeypatch, existing
):
    data = write_toy_jsonl(tmp_path / "toy.jsonl", 8, seed=0)
    out = tmp_path / "run"

    def refusing(*args, **kwargs):  # meanwhile another launch made its run folder inside
        (out / "b" / "checkpoints").mkdir(parents=True)
        _refusing()

    monkeypatch.setattr(reporters, "TensorBoardReporter", refusing)
    if existing:  # a folder of the user's: its files stay, the run's go
        (out / "tensorboard").mkdir(parents=True)
        (out / "notes.txt").write_text("mine")
    sets = {"model.tokenizer_vocab_size": 400, "data.files": f"[{data}]", "checkpoint.out_dir": out}
    sets.update(dict([ARCH.split("=", 1)]))
    sets.update({"train.max_steps": 1, "train.samples_per_step": 2, "packing.max_tokens": 400})
    sets["logging.report_to"] = "[tensorboard]"
    assert main(train_argv(sets, "--no-progress")) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == (
        "reflectioncoder train: logging.report_to: tensorboard did not start: No API key "
        "configured. Use `wandb login` to log in."
    )
    kept = ["b", "notes.txt", "tensorboard"] if existing else ["b"]
    assert sorted(p.name for p in out.iterdir()) == kept
