"""SPEC §2's normalisation: an optimizer step's denominators (samples, CE label tokens, KL
rows; ``step_counts``) and each sample's loss weights from them (``sample_weights``), so that
summing the weighted loss over the step's micro-batches and ranks gives the step's loss."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from reflectioncoder.data.config import MaskConfig
from reflectioncoder.data.tokenize import IGNORE, TokenizedSample


@dataclass
class StepCounts:
    """Denominators of one optimizer step (sum them over data-parallel ranks)."""

    samples: int = 0
    label_tokens: int = 0
    kl_rows: int = 0

    def __add__(self, other: StepCounts) -> StepCounts:
        return StepCounts(
            self.samples + other.samples,
            self.label_tokens + other.label_tokens,
            self.kl_rows + other.kl_rows,
        )


def has_student(sample: TokenizedSample, cfg: MaskConfig) -> bool:
    """Whether ``sample`` has a student segment (a reflection sample, distillation on)."""
    return sample.is_reflection and cfg.distill


def _sample_counts(sample: TokenizedSample, cfg: MaskConfig) -> tuple[int, int]:
    """(CE label tokens, KL rows) of one sample; both step-independent, as the student's
    labels (a .. L-2) all lie after the reflection body and are never hidden."""
    teacher = int(np.count_nonzero(sample.labels.numpy()[1:] != IGNORE))
    if not has_student(sample, cfg):
        return teacher, 0
    student = int(np.count_nonzero(sample.student_labels.numpy()[1:] != IGNORE))
    return teacher + student, (student if cfg.kl else 0)


def step_counts(samples: Sequence[TokenizedSample], mask_cfg: MaskConfig) -> StepCounts:
    """This rank's counts for one optimizer step (samples, CE label tokens, KL rows)."""
    total = StepCounts()
    for s in samples:
        ce, kl = _sample_counts(s, mask_cfg)
        total = total + StepCounts(1, ce, kl)
    return total


def sample_weights(
    sample: TokenizedSample, mask_cfg: MaskConfig, normalisation: str, denominators: StepCounts
) -> tuple[float, float]:
    """(weight of each CE row, weight of each KL row) of one sample (SPEC §2)."""
    ce, kl = _sample_counts(sample, mask_cfg)
    if normalisation == "sample":
        n = max(denominators.samples, 1)
        return (1.0 / (n * ce) if ce else 0.0), (1.0 / (n * kl) if kl else 0.0)
    if normalisation == "token":
        return (
            1.0 / denominators.label_tokens if denominators.label_tokens else 0.0,
            1.0 / denominators.kl_rows if denominators.kl_rows else 0.0,
        )
    raise ValueError(f"normalisation: must be sample or token, got {normalisation!r}")
