"""A ``--resume`` that would hold out other samples than its checkpoint's run did (the fraction,
the seed or the data changed) is refused: the steps already trained may have used samples the
resumed run would report as held out, a held-out loss on trained data."""

from __future__ import annotations

from pathlib import Path

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


def test_a_resume_holding_out_the_same_samples_goes_on(tmp_path, seed):
    held = ("data.validation_fraction=0.25", *KEEP)
    trained = _one_step(tiny_config(tmp_path, seed, extra=held))
    again = Trainer(tiny_config(tmp_path, seed, extra=held), resume=True)
    try:
        assert again.step == 1 and not trained & {s.source for s in again.validation}
    finally:
        again.close()
    # holding out none: nothing trained is reported as held out, but the training samples, so
    # the steps, are others than the checkpoint's run planned (tests/test_resume_plan.py)
    with pytest.raises(UserError, match="other samples or in another order"):
        Trainer(tiny_config(tmp_path, seed, extra=KEEP), resume=True).close()


@pytest.mark.parametrize("how", ["files", "fraction"])
def test_held_out_samples_also_in_the_training_data_are_named(tmp_path, seed, caplog, how):
    """The same file given as data.files and data.validation_files, or a sample listed twice
    of which one line is held out: the held-out loss covers trained samples, and the start says
    how many."""
    cfg = tiny_config(tmp_path, seed, extra=("train.max_steps=1",))
    data = cfg.data.files[0]
    lines = Path(data).read_text().splitlines()
    if how == "files":
        extra = (f"data.validation_files=[{data}]",)
        want = len(lines)
    else:  # every sample twice, on two lines: a held-out line's twin is trained on
        twice = tmp_path / "twice.jsonl"
        twice.write_text("\n".join(lines + lines) + "\n")
        extra = (f"data.files=[{twice}]", "data.validation_fraction=0.25")
        want = None
    with caplog.at_level("WARNING", logger="reflectioncoder.train"):
        trainer = Trainer(tiny_config(tmp_path, seed, extra=("train.max_steps=1", *extra)))
        trainer.close()
    if how == "fraction":
        trained = {s.ids.numpy().tobytes() for s in trainer.samples}
        want = sum(s.ids.numpy().tobytes() in trained for s in trainer.validation)
        assert want > 0
    said = [r.getMessage() for r in caplog.records if "also in the training data" in r.message]
    assert said and said[0].startswith(f"validation: {want} of {len(trainer.validation)} ")


def test_the_model_card_gives_the_last_held_out_loss_after_a_resume(tmp_path, seed):
    from reflectioncoder.train.model_card import parse

    extra = ("data.validation_fraction=0.25", "train.eval_every=1", *KEEP)
    first = Trainer(tiny_config(tmp_path, seed, extra=extra))
    try:  # step 1 and its held-out loss row, as train() does them
        first.train_step()
        first.validate()
        first.save()
    finally:
        first.close()
    again = Trainer(tiny_config(tmp_path, seed, extra=extra), resume=True)
    try:
        assert "held-out loss" in again.model_card()  # the resumed run read it back
        summary = again.train()
    finally:
        again.close()
    card = (tmp_path / "run" / "checkpoints" / "step-000003" / "model" / "README.md").read_text()
    results = parse(card)[2]["Training results"]
    n = len(again.validation)
    want = f"| held-out loss at step 3 ({n} samples) | {summary['val_loss']:.4f} |"
    assert want in results, results
