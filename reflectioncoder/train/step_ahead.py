"""Each optimizer step's host work (plan, mask, pack, the host totals, pinned copies on CUDA),
the next step's prepared on one background thread while the current step computes: the step
waits only for what is not ready yet (``host_wait``). A step's draws are functions of (seed,
step, uid), so nothing depends on when the work runs."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

import torch

from reflectioncoder.data.packing import PackedBatch
from reflectioncoder.errors import ctrl_c_to_main_thread
from reflectioncoder.train.flops import ModelShape, StepFlops, batch_flops


@dataclasses.dataclass
class PreparedStep:
    """One step's host work: this rank's micro-batches and its host totals (tokens, samples,
    model FLOPs, hardware FLOPs: ``train.flops``, the reference recipe's tokens), added to the
    step's device sums once."""

    step: int
    batches: list[PackedBatch]
    totals: torch.Tensor


def prepare_step(
    step: int,
    batches: list[PackedBatch],
    shape: ModelShape,
    recompute: float,
    split: bool,
    device: torch.device,
) -> PreparedStep:
    """Step ``step``'s micro-batches with their host totals (FLOPs counted with ``recompute``,
    the share of the forward rerun, and ``split``, the teacher's CE pass); on CUDA pinned
    copies, so the copies to the device can overlap."""
    flops = sum((batch_flops(shape, b, recompute, split) for b in batches), StepFlops())
    totals = torch.tensor(
        [
            sum(b.num_tokens for b in batches),
            sum(b.num_samples for b in batches),
            flops.model,
            flops.hardware,
            sum(b.reference_tokens for b in batches),
        ],
        dtype=torch.float64,
    )
    if device.type == "cuda":
        batches = [b.pin_memory() for b in batches]
        totals = totals.pin_memory()
    return PreparedStep(step, batches, totals)


class StepAhead:
    """``take(step)``: step ``step``'s host work, prepared while the previous step ran (or now,
    on the first step); the next step's is then started on the background thread."""

    def __init__(self, prepare: Callable[[int], PreparedStep], total_steps: int) -> None:
        self._prepare = prepare
        self._total_steps = total_steps
        self._pool = ThreadPoolExecutor(1, "rc-prepare", initializer=ctrl_c_to_main_thread)
        self.pending: Future[PreparedStep] | None = None  # the next step's, being prepared

    def take(self, step: int) -> tuple[PreparedStep, float]:
        """Step ``step``'s host work, and the seconds this step waited for it (host time left
        on the critical path)."""
        t0 = time.perf_counter()
        ahead, self.pending = self.pending, None
        prepared = ahead.result() if ahead is not None else None
        if prepared is None or prepared.step != step:  # the first step: prepared now, on the
            # same thread as every other, so the training thread never reads a host tensor
            prepared = self._pool.submit(self._prepare, step).result()
        waited = time.perf_counter() - t0
        if step + 1 < self._total_steps:
            self.pending = self._pool.submit(self._prepare, step + 1)
        return prepared, waited

    def close(self) -> None:
        """Stop the background thread (a step being prepared finishes, none starts)."""
        self._pool.shutdown(wait=True, cancel_futures=True)
