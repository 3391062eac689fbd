"""The trainer's teacher-CE logging pass (``logging.split_ce``) takes the loss's forward-only
path (issue 20, item 3): through ``Trainer.train_step`` on the CPU, every micro-batch asks the
fused loss for its gradients once (the training loss) and, on a logging step, once more for the
loss alone, with neither d h nor d W."""

from __future__ import annotations

import pytest
from reflectioncoder.kernels import fused_loss


def _chunk_runs(tmp_path, seed, split: bool) -> tuple[list[tuple[bool, bool]], int]:
    """(need_dh, need_dw) of every ``run_chunks`` call of one step, and its micro-batches."""
    from test_trainer import tiny_config

    from reflectioncoder.train.trainer import Trainer

    extra = ("packing.max_tokens=160", f"logging.split_ce={str(split).lower()}",
             "logging.log_every=1")  # fmt: skip
    trainer = Trainer(tiny_config(tmp_path, seed, n=8, extra=extra))
    calls = []
    real = fused_loss.run_chunks
    try:
        micro_batches = len(trainer.step_batches(0))
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(fused_loss, "run_chunks", lambda *a: calls.append(a[4:]) or real(*a))
            row = trainer.train_step()
    finally:
        trainer.close()
    assert (row["teacher_ce"] is not None) == split
    return calls, micro_batches


@pytest.mark.parametrize("split", [True, False], ids=["logging-step", "no-split"])
def test_logging_pass_computes_no_gradients(tmp_path, seed, split):
    calls, micro_batches = _chunk_runs(tmp_path, seed, split)
    assert micro_batches >= 2
    training = [c for c in calls if c != (False, False)]
    loss_only = [c for c in calls if c == (False, False)]
    assert len(training) == micro_batches and all(any(c) for c in training), calls
    assert len(loss_only) == (micro_batches if split else 0), calls
