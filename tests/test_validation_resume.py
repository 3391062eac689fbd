"""A ``--resume`` that would hold out other samples than its checkpoint's run did (the fraction,
the seed or the data changed) is refused: the steps already trained may have used samples the
resumed run would report as held out, a held-out loss on trained data."""

from __future__ import annotations

import pytest
from test_trainer import tiny_config

from reflectioncoder.errors import UserError
from reflectioncoder.train.trainer import Trainer

KEEP = ("checkpoint.save_every=1", "checkpoint.save_final=false", "train.max_steps=3")


def _one_step(cfg) -> set[str]:
    """Train and save step 1 of ``cfg``: the sources it trained on."""
    trainer = Trainer(cfg)
    try:
        trained = {trainer.samples[i].source for i in trainer.plan[0]}
        trainer.train_step()
        trainer.save()
    finally:
        trainer.close()
    return trained


@pytest.mark.parametrize("first, then", [("0", "0.25"), ("0.25", "0.125")])
def test_a_resume_that_holds_out_other_samples_is_refused(tmp_path, seed, first, then):
    _one_step(tiny_config(tmp_path, seed, extra=(*KEEP, f"data.validation_fraction={first}")))
    cfg = tiny_config(tmp_path, seed, extra=(*KEEP, f"data.validation_fraction={then}"))
    with pytest.raises(UserError, match="held out") as err:
        Trainer(cfg, resume=True).close()
    assert err.value.field == "data.validation_fraction"


def test_a_resume_holding_out_the_same_or_no_samples_goes_on(tmp_path, seed):
    held = ("data.validation_fraction=0.25", *KEEP)
    trained = _one_step(tiny_config(tmp_path, seed, extra=held))
    again = Trainer(tiny_config(tmp_path, seed, extra=held), resume=True)
    try:
        assert again.step == 1 and not trained & {s.source for s in again.validation}
    finally:
        again.close()
    # holding out none: nothing trained is reported as held out
    again = Trainer(tiny_config(tmp_path, seed, extra=KEEP), resume=True)
    again.close()
    assert again.step == 1 and not again.validation
