"""A relaunch with --resume that cannot continue the run (the model changed in the config, a
checkpoint damaged on disk): one line naming the checkpoint and what to do, and the run folder
as it was: OUT/config.yaml is rewritten only once the checkpoint has loaded (a failed resume
left the new, wrong config as the run's record)."""

from __future__ import annotations

import pytest

from reflectioncoder.cli import main
from reflectioncoder.testing.cli import ONE_STEP, train_argv
from reflectioncoder.testing.toy_jsonl import write_toy_jsonl
from reflectioncoder.tokenizer import train_tokenizer


@pytest.fixture
def run(tmp_path):
    """A finished run with checkpoints at steps 1 and 2."""
    data = write_toy_jsonl(tmp_path / "data.jsonl", 4, seed=0)
    train_tokenizer([data.read_text()], 300, tmp_path / "tok")
    sets = {"data.files": f"[{data}]", "model.tokenizer": tmp_path / "tok", **ONE_STEP}
    sets.update({"checkpoint.out_dir": tmp_path / "run", "checkpoint.save_every": 1})
    sets["train.max_steps"] = 2
    assert main(train_argv(sets, "--no-progress")) == 0
    return tmp_path / "run", sets


def _files(out):
    return {p: p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file() and p.name != ".lock"}


def test_resume_with_another_model_is_refused(run, capsys):
    out, sets = run
    before = _files(out)
    argv = train_argv({**sets, "model.arch.hidden_size": 32}, "--resume")
    assert main(argv) == 1
    assert capsys.readouterr().err == (
        f"reflectioncoder train: {out / 'checkpoints' / 'step-000002'}: --resume: its model is not "
        "this config's (hidden_size 64 -> 32, head_dim 16 -> 8): resume with the model it was "
        "trained with (model.arch, model.name_or_path)\n"
    )
    assert _files(out) == before


def test_a_damaged_checkpoint_names_the_one_before(run, capsys):
    out, sets = run
    optimizer = out / "checkpoints" / "step-000002" / "optimizer.pt"
    optimizer.write_bytes(optimizer.read_bytes()[:1000])  # a copy cut short
    before = _files(out)
    assert main(train_argv({**sets, "optim.lr": 1e-5}, "--resume")) == 1
    err = capsys.readouterr().err
    assert err.startswith(
        f"reflectioncoder train: {out / 'checkpoints' / 'step-000002'}: --resume: cannot be read, "
        "a file in it is damaged ("
    )
    assert err.endswith(f"); an earlier one: --resume {out / 'checkpoints' / 'step-000001'}\n")
    assert _files(out) == before  # config.yaml still says the run's own lr
