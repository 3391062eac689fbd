"""Optimizer steps whose update was skipped on the device (a non-finite loss or gradient norm:
the fused AdamW's ``found_inf``): counted, warned about, and the run stopped once too many come
in a row."""

from __future__ import annotations

import logging

log = logging.getLogger("reflectioncoder.train")


class NonFiniteError(RuntimeError):
    """Too many optimizer steps in a row had a non-finite loss or gradient."""


class SkippedSteps:
    """The run's skipped updates: ``total`` (resumed runs start from their checkpoint's)."""

    def __init__(self, most_in_a_row: int, total: int = 0, warn: bool = True) -> None:
        self.most_in_a_row = most_in_a_row
        self.total = total
        self.in_a_row = 0
        self.warn = warn  # rank 0 warns

    def record(self, step: int, applied: bool, loss: float, grad_norm: float) -> None:
        """Count step ``step`` (from 1), its update applied or skipped."""
        if applied:
            self.in_a_row = 0
            return
        self.total += 1
        self.in_a_row += 1
        if self.warn:
            log.warning(
                "step %d: non-finite loss (%s) or gradient norm (%s): update skipped, weights "
                "unchanged (%d skipped so far)",
                step,
                loss,
                grad_norm,
                self.total,
            )

    def stop_if_too_many(self, step: int) -> None:
        """Raise ``NonFiniteError`` once too many steps in a row were skipped (after the step's
        metrics row is written)."""
        if self.in_a_row >= self.most_in_a_row:
            raise NonFiniteError(
                f"{self.in_a_row} optimizer steps in a row had a non-finite loss "
                f"or gradient (last: step {step}); stopping: lower optim.lr or check "
                "the data."
            )
