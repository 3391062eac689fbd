"""A ``--resume`` must train the steps its checkpoint's run planned: other data of the same size,
an edited file or another seed plan the same number of steps, which the step count alone let
through (samples trained twice, others never). The checkpoint records the plan's sha256."""

from __future__ import annotations

import pytest
from test_trainer import tiny_config

from reflectioncoder.errors import UserError
from reflectioncoder.testing.toy_jsonl import write_toy_jsonl
from reflectioncoder.train.trainer import Trainer

KEEP = ("checkpoint.save_every=1", "checkpoint.save_final=false", "train.max_steps=3")


def _save_step_one(cfg) -> None:
    trainer = Trainer(cfg)
    try:
        trainer.train_step()
        trainer.save()
    finally:
        trainer.close()


@pytest.mark.parametrize("change", ["other data of the same size", "another seed"])
def test_a_resume_planning_other_steps_is_refused(tmp_path, seed, change):
    _save_step_one(tiny_config(tmp_path, seed, extra=KEEP))
    if change == "another seed":
        extra = (*KEEP, f"train.seed={seed + 1}")
    else:
        other = write_toy_jsonl(tmp_path / "other.jsonl", 16, seed=seed + 1)
        extra = (*KEEP, f"data.files=[{other}]")
    cfg = tiny_config(tmp_path, seed, extra=extra)
    with pytest.raises(UserError, match="other samples or in another order") as err:
        Trainer(cfg, resume=True).close()
    assert err.value.field == "data.files"


def test_a_resume_with_the_runs_own_data_goes_on(tmp_path, seed):
    _save_step_one(tiny_config(tmp_path, seed, extra=KEEP))
    again = Trainer(tiny_config(tmp_path, seed, extra=KEEP), resume=True)
    again.close()
    assert again.step == 1
