"""``--resume PATH`` given the wrong folder (a run folder, the trained model, a checkpoint's
model/, an interrupted save, a typo): one line saying what the folder is and what to give
instead (it was "not a complete checkpoint folder" for all of them); the run is untouched."""

from __future__ import annotations

import pytest

from reflectioncoder.cli import main
from reflectioncoder.testing.cli import ONE_STEP, train_argv
from reflectioncoder.testing.toy_jsonl import write_toy_jsonl
from reflectioncoder.tokenizer import train_tokenizer


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A finished run: checkpoints at steps 1 and 2, final/, and a save killed midway."""
    root = tmp_path_factory.mktemp("resume")
    data = write_toy_jsonl(root / "data.jsonl", 4, seed=0)
    train_tokenizer([data.read_text()], 300, root / "tok")
    sets = {"data.files": f"[{data}]", "model.tokenizer": root / "tok", **ONE_STEP}
    sets.update({"checkpoint.out_dir": root / "run", "train.max_steps": 2})
    assert main(train_argv({**sets, "checkpoint.save_every": 1}, "--no-progress")) == 0
    (root / "run" / "checkpoints" / ".tmp-step-000003").mkdir()
    return root, sets


WRONG = {
    "run": "this is a run folder; its newest complete checkpoint is {run}/checkpoints/step-000002",
    "run/final": "a model, not a checkpoint (no optimizer state); to train it further, start a "
    "run with model.name_or_path={run}/final",
    "run/checkpoints/step-000002/model": "a folder inside the checkpoint "
    "{run}/checkpoints/step-000002: give that",
    "run/checkpoints/.tmp-step-000003": "its save was interrupted: not a complete checkpoint",
    # journey9: a mistyped step names the run's checkpoints
    "run/checkpoints/step-2": "not found; the run's checkpoints: step-000001, step-000002",
    "elsewhere/step-000002": "not found",
}


@pytest.mark.parametrize("given", sorted(WRONG))
def test_resume_from_the_wrong_folder_says_what_it_is(run, capsys, given):
    root, sets = run
    before = sorted(p.relative_to(root) for p in (root / "run").rglob("*"))
    assert main(train_argv(sets, "--resume", str(root / given))) == 1
    reason = WRONG[given].format(run=root / "run")
    assert capsys.readouterr().err == (
        f"reflectioncoder train: {root / given}: --resume: {reason}\n"
    )
    assert sorted(p.relative_to(root) for p in (root / "run").rglob("*")) == before
