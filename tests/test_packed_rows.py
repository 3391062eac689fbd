"""What a PackedBatch says about its loss rows (which are the student's, which carry CE alone,
which are the teacher's CE rows) and the fused loss fed those rows instead of finding them."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from reflectioncoder.data.config import MaskConfig, PackingConfig
from reflectioncoder.data.packing import pack_rank, plan_step, zero_weight
from reflectioncoder.data.tokenize import IGNORE
from reflectioncoder.loss import reflection_loss
from reflectioncoder.testing.synthetic import synthetic_samples

VOCAB = 300


def _batches(seed: int, kl: bool = True, generation_fraction: float = 0.3):
    samples = synthetic_samples(
        7,
        vocab_size=VOCAB,
        seed=seed,
        instruction=(2, 12),
        reflection=(6, 40),
        answer=(2, 12),
        generation_fraction=generation_fraction,
    )
    mask, packing = MaskConfig(kl=kl), PackingConfig(max_tokens=150)
    plan = plan_step(samples, 3, 10, mask, packing, seed)
    return plan, pack_rank(plan, 0, mask, packing)


def _student_tokens(plan, j: int, batch) -> torch.Tensor:
    """(T,) bool from the plan: micro-batch j's samples in order, each teacher followed by its
    student when it has one."""
    kinds = []
    for i in plan.groups[0][j]:
        kinds += [False, True] if plan.student_row[i] >= 0 else [False]
    assert len(kinds) == len(batch.seq_lens)
    return torch.repeat_interleave(torch.tensor(kinds), torch.tensor(batch.seq_lens))


@pytest.mark.parametrize("kl", [True, False])
def test_rows_agree_with_the_layout(seed, kl):
    plan, batches = _batches(seed, kl)
    assert len(batches) > 1
    for j, batch in enumerate(batches):
        student = _student_tokens(plan, j, batch)[batch.loss_rows]
        assert torch.equal(batch.row_is_student, student)
        has_ce = (batch.targets != IGNORE) & (batch.ce_weight != 0)
        paired = torch.zeros_like(has_ce)
        paired[batch.kl_pairs.reshape(-1)] = True
        assert torch.equal(batch.ce_only_rows, (has_ce & ~paired).nonzero()[:, 0])
        assert torch.equal(batch.teacher_ce_rows, (has_ce & ~student).nonzero()[:, 0])


def test_loss_with_the_given_rows_is_bitwise_the_found_ones(seed):
    g = torch.Generator().manual_seed(seed)
    weight = torch.randn(VOCAB, 16, generator=g, requires_grad=True)
    # The step as drawn (a micro-batch of generation samples alone has no KL pair: TEST_SEED=31),
    # and one of reflection samples only, whose every micro-batch has both kinds of rows.
    mixed, reflections = _batches(seed)[1], _batches(seed, generation_fraction=0.0)[1]
    for batch in reflections:
        assert batch.ce_only_rows.numel() and batch.kl_pairs.numel()
    for batch in mixed + reflections:
        hidden = torch.randn(batch.num_tokens, 16, generator=g, requires_grad=True)
        found = dataclasses.replace(batch, ce_only_rows=None)
        results = []
        for b in (batch, found):
            loss, parts = reflection_loss(hidden, b, weight, backend="torch")
            grads = torch.autograd.grad(loss, (hidden, weight))
            results.append((loss, parts["ce"], parts["kl"], *grads))
        for given, computed in zip(*results, strict=True):
            assert torch.equal(given, computed)


def test_filler_batch_keeps_its_rows_and_adds_nothing(seed):
    batch = zero_weight(_batches(seed)[1][0])
    hidden = torch.randn(batch.input_ids.numel(), 8, requires_grad=True)
    loss, _ = reflection_loss(hidden, batch, torch.randn(VOCAB, 8), backend="torch")
    assert loss.item() == 0.0


def test_checked_inputs_refuse_wrong_rows(seed):
    # Reflection samples only: a micro-batch of generation samples alone has no KL pair to
    # misplace (TEST_SEED=1610184931 drew one first).
    batch = next(
        b for b in _batches(seed, generation_fraction=0.0)[1] if b.ce_only_rows.numel() > 1
    )
    assert batch.kl_pairs.numel()
    hidden, weight = torch.randn(batch.num_tokens, 8), torch.randn(VOCAB, 8)
    missing = dataclasses.replace(batch, ce_only_rows=batch.ce_only_rows[1:])
    paired = dataclasses.replace(
        batch, ce_only_rows=torch.cat([batch.ce_only_rows, batch.kl_pairs[:1, 0]]).sort()[0]
    )
    for bad in (missing, paired):
        with pytest.raises(ValueError, match="ce_only_rows"):
            reflection_loss(hidden, bad, weight, backend="torch", check_inputs=True)
