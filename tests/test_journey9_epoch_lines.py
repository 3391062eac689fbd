"""The per-epoch line of a step that spans epochs says both, and one step is `step N`: the
paper's 512 samples a step over 240 samples and 2 epochs logged `epoch 2, steps 1-1`, as if the
run had skipped its first epoch."""

from __future__ import annotations

from reflectioncoder.train.schedule import EpochReport

ROW = {"tokens": 10, "reference_tokens": 20}


def _lines(plan: list[list[int]], epoch_samples: int) -> list[str]:
    report = EpochReport(plan, epoch_samples, 0)
    said = [report.add({"step": s, **ROW}) for s in range(1, len(plan) + 1)]
    return [line.split(":")[0] for line in said if line]


def test_one_step_over_two_epochs_says_both():
    assert _lines([list(range(480))], 240) == ["epochs 1-2, step 1"]


def test_one_step_is_step_n_and_several_steps_n_m():
    plan = [[0, 1], [2, 0], [1, 2], [0]]  # 3 samples an epoch, 2 a step
    assert _lines(plan, 3) == ["epoch 1, steps 1-2", "epoch 2, step 3", "epoch 3 (part), step 4"]
