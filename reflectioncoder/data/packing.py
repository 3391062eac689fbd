"""Packing an optimizer step's samples into flat micro-batches (docs/ARCHITECTURE.md).

Each reflection sample gives two sequences in one flat batch: its teacher (every token) and,
right after it, its student (the visible tokens only, original position ids). Generation
samples (or distillation off) give the teacher only. Only rows with a CE target or in a KL
pair become loss rows. Normalisation (SPEC §2) lives entirely in ``ce_weight``/``kl_weight``
so that summing the loss over the step's micro-batches gives the step's loss.

One plan object per optimizer step, built once and alike on every rank (``plan_step``): the
step's samples, the global denominators, every student's mask draw, and each rank's
micro-batches, balanced by tokens so that every rank runs the same number of them with nearly
equal token counts (``balance.py``). ``pack_rank`` turns one rank's share into ``PackedBatch``es,
weighted by SPEC §2's normalisation (``normalisation.py``).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, fields, replace

import numpy as np
import torch

from reflectioncoder.data.balance import balance_groups
from reflectioncoder.data.config import MaskConfig, PackingConfig
from reflectioncoder.data.masking import (
    MaskPlan,
    StudentTokens,
    apply_masks_host,
    draw_masks,
    select_masks,
)
from reflectioncoder.data.normalisation import StepCounts, has_student, sample_weights, step_counts
from reflectioncoder.data.tokenize import IGNORE, TokenizedSample


@dataclass
class PackedBatch:
    """One micro-batch, ready for the model and the fused loss.

    input_ids, position_ids: (T,) int64 (students keep original, gapped positions);
    cu_seqlens: (S+1,) int32; max_seqlen: int; seq_lens: host list of the S lengths;
    loss_rows: (R,) int64 indices into T; targets: (R,) int64 (-100: no CE on the row);
    ce_weight: (R,) float32; kl_pairs: (P, 2) int64 (teacher_row, student_row) into the R rows;
    kl_weight: (P,) float32. The loss is sum ce_weight*CE + sum kl_weight*KL.
    row_is_student: (R,) bool, the loss rows in student segments; ce_only_rows: (M,) int64, the
    rows with a CE term and in no KL pair; teacher_ce_rows: (K,) int64, the teacher rows with a
    CE term (both ascending, into the R rows: the fused loss's plan reads no count from the
    device with them, and the teacher/student CE split needs no rebuilding of the layout).
    token_sample: (T,) int64, the sample (0 .. num_samples-1 of this batch) each token is of;
    aux_weight: (n,) float32, each sample's weight in a mixture of experts' balancing loss
    (1 / the step's samples: reflectioncoder/router_loss.py).
    Host counts: num_samples, num_tokens (T), num_label_tokens (CE targets), num_kl_rows (P),
    reference_tokens (what the reference runs: passes x samples x padded length).
    """

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    cu_seqlens: torch.Tensor
    max_seqlen: int
    seq_lens: list[int]
    loss_rows: torch.Tensor
    targets: torch.Tensor
    ce_weight: torch.Tensor
    kl_pairs: torch.Tensor
    kl_weight: torch.Tensor
    row_is_student: torch.Tensor
    ce_only_rows: torch.Tensor
    teacher_ce_rows: torch.Tensor
    token_sample: torch.Tensor
    aux_weight: torch.Tensor
    num_samples: int = 0
    num_tokens: int = 0
    num_label_tokens: int = 0
    num_kl_rows: int = 0
    reference_tokens: int = 0
    sources: list[str] = field(default_factory=list)

    def pin_memory(self) -> PackedBatch:
        """A copy with every tensor in pinned host memory (asynchronous copies to CUDA)."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        for name, v in values.items():
            if torch.is_tensor(v):
                values[name] = v.pin_memory()
        return PackedBatch(**values)

    def to(self, device: torch.device | str, non_blocking: bool = True) -> PackedBatch:
        """A copy with every tensor on ``device`` (host counts unchanged)."""
        values = {}
        for f in fields(self):
            v = getattr(self, f.name)
            values[f.name] = v.to(device, non_blocking=non_blocking) if torch.is_tensor(v) else v
        return PackedBatch(**values)


def build_packed_batch(
    samples: Sequence[TokenizedSample],
    masks: MaskPlan,
    mask_cfg: MaskConfig,
    normalisation: str,
    denominators: StepCounts,
) -> PackedBatch:
    """Pack ``samples`` (one micro-batch) with their students masked by ``masks`` (the draws of
    their students, in order: a ``StepPlan``'s share) on the host. ``denominators``: the whole
    step's counts across micro-batches and ranks."""
    if not samples:
        raise ValueError("samples: a micro-batch needs at least one sample")
    students = [s for s in samples if has_student(s, mask_cfg)]
    if len(masks.student_lens) != len(students):
        raise ValueError(f"masks: {len(masks.student_lens)} draws for {len(students)} students")
    if students:
        s_ids = torch.cat([s.ids for s in students])
        s_labels = torch.cat([s.student_labels for s in students])
    else:
        s_ids = s_labels = torch.zeros(0, dtype=torch.int64)
    tokens = apply_masks_host(masks, s_ids, s_labels)
    return _assemble(samples, masks, tokens, mask_cfg, normalisation, denominators)


@dataclass
class _Layout:
    """Where each sequence of a micro-batch sits in its flat (T,) arrays: a teacher per sample,
    its student right after it (``s_offsets[i]`` -1 without one)."""

    seq_lens: list[int]
    t_offsets: list[int]
    s_offsets: list[int]
    hidden_of: dict[int, int]  # sample index -> tokens its student hides
    total: int

    @property
    def sample_tokens(self) -> list[int]:
        """Each sample's tokens: its teacher's and its student's (adjacent in T)."""
        ends = [*self.t_offsets[1:], self.total]
        return [end - start for start, end in zip(self.t_offsets, ends, strict=True)]


def _layout(samples: Sequence[TokenizedSample], plan: MaskPlan, mask_cfg: MaskConfig) -> _Layout:
    seq_lens: list[int] = []
    t_offsets, s_offsets = [], []
    hidden_of: dict[int, int] = {}
    offset = k = 0
    for i, s in enumerate(samples):
        seq_lens.append(len(s))
        t_offsets.append(offset)
        offset += len(s)
        if has_student(s, mask_cfg):
            if s.answer_start - 1 <= s.body_end:  # the row formula needs [a - 1, L) visible
                raise ValueError(f"samples: {s.source}: answer overlaps the reflection body")
            seq_lens.append(plan.student_lens[k])
            s_offsets.append(offset)
            hidden_of[i] = len(s) - plan.student_lens[k]
            offset += plan.student_lens[k]
            k += 1
        else:
            s_offsets.append(-1)
    return _Layout(seq_lens, t_offsets, s_offsets, hidden_of, offset)


def _loss_targets(
    samples: Sequence[TokenizedSample],
    layout: _Layout,
    mask_cfg: MaskConfig,
    normalisation: str,
    denominators: StepCounts,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Flat per-token arrays: the CE target each row predicts and its weight; the KL pairs'
    teacher and student rows (token indices) and their weights."""
    target = np.full(layout.total, IGNORE, dtype=np.int64)
    ce_w = np.zeros(layout.total, dtype=np.float32)
    kl_t, kl_s, kl_w = [], [], []
    for i, s in enumerate(samples):
        length, to = len(s), layout.t_offsets[i]
        w_ce, w_kl = sample_weights(s, mask_cfg, normalisation, denominators)
        labels = s.labels.numpy()
        target[to : to + length - 1] = labels[1:]  # teacher row j predicts labels[j + 1]
        ce_w[to : to + length - 1] = np.where(labels[1:] != IGNORE, w_ce, 0.0)
        so = layout.s_offsets[i]
        if so < 0:
            continue
        hidden = layout.hidden_of[i]
        a = s.answer_start
        # Student CE: row k predicts the student label at k + 1: rows of positions a-1 .. L-3.
        lo = so + a - 1 - hidden
        target[lo : lo + length - 1 - a] = s.student_labels.numpy()[a : length - 1]
        ce_w[lo : lo + length - 1 - a] = w_ce
        if mask_cfg.kl:  # KL rows a .. L-2, shifted by one from the student CE rows (quirk)
            kl_t.append(np.arange(to + a, to + length - 1))
            kl_s.append(np.arange(so + a - hidden, so + length - 1 - hidden))
            kl_w.append(np.full(length - 1 - a, w_kl, dtype=np.float32))
    kt = np.concatenate(kl_t) if kl_t else np.zeros(0, np.int64)
    ks = np.concatenate(kl_s) if kl_s else np.zeros(0, np.int64)
    kw = np.concatenate(kl_w) if kl_w else np.zeros(0, np.float32)
    return target, ce_w, kt, ks, kw


def _place_tokens(
    samples: Sequence[TokenizedSample], layout: _Layout, plan: MaskPlan, tokens: StudentTokens
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Flat input ids and positions of teachers and students (the mask's output), each placed
    with ONE scatter (no per-sample copies); and where the student tokens went."""
    t_lens = np.asarray([len(x) for x in samples], dtype=np.int64)
    t_start = np.asarray(layout.t_offsets, dtype=np.int64)
    t_pos = np.arange(int(t_lens.sum())) - np.repeat(np.cumsum(t_lens) - t_lens, t_lens)
    t_at = np.repeat(t_start, t_lens) + t_pos  # where each teacher token goes in T
    s_lens = np.asarray(plan.student_lens, dtype=np.int64)
    s_start = np.asarray([o for o in layout.s_offsets if o >= 0], dtype=np.int64)
    s_at = (
        np.repeat(s_start, s_lens)
        + np.arange(int(s_lens.sum()))
        - np.repeat(np.cumsum(s_lens) - s_lens, s_lens)
    )  # where each student token goes in T
    # numpy: torch's CPU index_put is far slower on these sizes
    ids = np.empty(layout.total, dtype=np.int64)
    pos = np.empty(layout.total, dtype=np.int64)
    ids[t_at] = np.concatenate([x.ids.numpy() for x in samples])
    pos[t_at] = t_pos
    ids[s_at] = tokens.input_ids.numpy()
    pos[s_at] = tokens.position_ids.numpy()
    return ids, pos, s_at


def _assemble(
    samples: Sequence[TokenizedSample],
    plan: MaskPlan,
    tokens: StudentTokens,
    mask_cfg: MaskConfig,
    normalisation: str,
    denominators: StepCounts,
) -> PackedBatch:
    """Interleave teachers and students; loss rows, targets, KL pairs and weights.

    Per-token work is numpy over the whole batch (flat arrays of length T). The student rows
    come from host counts: every position from ``end + 1`` on is visible, so the student index
    of such a position p is p - (hidden tokens).
    """
    layout = _layout(samples, plan, mask_cfg)
    target, ce_w, kt, ks, kl_w = _loss_targets(
        samples, layout, mask_cfg, normalisation, denominators
    )
    is_row = target != IGNORE
    num_ce = int(is_row.sum())
    is_row[kt] = True
    is_row[ks] = True
    loss_rows = np.flatnonzero(is_row)
    row_of = np.cumsum(is_row) - 1  # token index -> loss-row index
    kl_pairs = np.stack([row_of[kt], row_of[ks]], 1).reshape(-1, 2)
    ids, pos, s_at = _place_tokens(samples, layout, plan, tokens)
    # Which loss rows are the student's, which have a CE term alone, which the teacher's CE.
    is_student = np.zeros(layout.total, dtype=bool)
    is_student[s_at] = True
    in_pair = np.zeros(layout.total, dtype=bool)
    in_pair[kt] = in_pair[ks] = True
    has_ce = (target != IGNORE) & (ce_w != 0)
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a))
    seq_lens = layout.seq_lens
    cu = torch.zeros(len(seq_lens) + 1, dtype=torch.int32)
    cu[1:] = torch.tensor(seq_lens, dtype=torch.int64).cumsum(0).to(torch.int32)
    n_passes = sum(2 if has_student(s, mask_cfg) else 1 for s in samples)
    return PackedBatch(
        input_ids=torch.from_numpy(ids),
        position_ids=torch.from_numpy(pos),
        cu_seqlens=cu,
        max_seqlen=max(seq_lens),
        seq_lens=seq_lens,
        loss_rows=t(loss_rows),
        targets=t(target[loss_rows]),
        ce_weight=t(ce_w[loss_rows]),
        kl_pairs=t(kl_pairs),
        kl_weight=t(kl_w),
        row_is_student=t(is_student[loss_rows]),
        ce_only_rows=t(row_of[np.flatnonzero(has_ce & ~in_pair)]),
        teacher_ce_rows=t(row_of[np.flatnonzero(has_ce & ~is_student)]),
        token_sample=t(np.repeat(np.arange(len(samples)), layout.sample_tokens)),
        aux_weight=torch.full((len(samples),), 1.0 / max(denominators.samples, 1)),
        num_samples=len(samples),
        num_tokens=layout.total,
        num_label_tokens=num_ce,
        num_kl_rows=int(kt.size),
        reference_tokens=n_passes * max(len(s) for s in samples),
        sources=[s.source for s in samples],
    )


@dataclass
class StepPlan:
    """One optimizer step, decided once on the host and alike on every rank.

    samples: the step's samples (all ranks); denominators: their counts (SPEC §2's global
    normalisation, no communication needed); masks: every student's draw at this step, in
    sample order (``student_row[i]``: sample i's row, -1 without a student); tokens: each
    sample's tokens at this step (teacher + visible student); groups[rank][j]: sample indices
    of that rank's micro-batch j; padding[rank][j]: True for a zero-weight slot (only when the
    step has fewer samples than ranks x micro-batches).
    """

    step: int
    total_steps: int
    seed: int
    samples: list[TokenizedSample]
    denominators: StepCounts
    masks: MaskPlan
    student_row: list[int]
    tokens: list[int]
    groups: list[list[list[int]]]
    padding: list[list[bool]]

    @property
    def micro_batches(self) -> int:
        """Micro-batches per rank (the same on every rank)."""
        return len(self.groups[0])


def plan_step(
    samples: Sequence[TokenizedSample],
    step: int,
    total_steps: int,
    mask_cfg: MaskConfig,
    packing_cfg: PackingConfig,
    seed: int,
    world_size: int = 1,
) -> StepPlan:
    """The step's ``StepPlan``: masks drawn once, micro-batches balanced over ``world_size``."""
    samples = list(samples)
    if not samples:
        raise ValueError("samples: a step needs at least one sample")
    which = [i for i, s in enumerate(samples) if has_student(s, mask_cfg)]
    masks = draw_masks([samples[i] for i in which], step, total_steps, mask_cfg, seed)
    student_row = [-1] * len(samples)
    tokens = [len(s) for s in samples]
    for row, i in enumerate(which):
        student_row[i] = row
        tokens[i] += masks.student_lens[row]
    groups, padding = balance_groups(tokens, world_size, packing_cfg.max_tokens)
    return StepPlan(
        step=step,
        total_steps=total_steps,
        seed=seed,
        samples=samples,
        denominators=step_counts(samples, mask_cfg),
        masks=masks,
        student_row=student_row,
        tokens=tokens,
        groups=groups,
        padding=padding,
    )


def pack_rank(
    plan: StepPlan, rank: int, mask_cfg: MaskConfig, packing_cfg: PackingConfig
) -> list[PackedBatch]:
    """``rank``'s micro-batches of ``plan``, masked with the plan's draws. Summing the weighted
    losses of every rank's batches gives the step's loss (SPEC §2)."""
    return list(rank_batches(plan, rank, mask_cfg, packing_cfg))


def rank_batches(
    plan: StepPlan, rank: int, mask_cfg: MaskConfig, packing_cfg: PackingConfig
) -> Iterator[PackedBatch]:
    """``pack_rank``'s micro-batches, packed one at a time as they are asked for (a held-out
    set's are never all in memory at once)."""
    for group, pad in zip(plan.groups[rank], plan.padding[rank], strict=True):
        rows = [plan.student_row[i] for i in group if plan.student_row[i] >= 0]
        batch = build_packed_batch(
            [plan.samples[i] for i in group],
            select_masks(plan.masks, rows),
            mask_cfg,
            packing_cfg.normalisation,
            plan.denominators,
        )
        yield zero_weight(batch) if pad else batch


def zero_weight(batch: PackedBatch) -> PackedBatch:
    """A batch that costs a forward and backward but adds nothing: fills a rank's slot when the
    step has too few samples, so every rank runs the same collectives (ZeRO-3 gathers per
    forward)."""
    return replace(
        batch,
        ce_weight=torch.zeros_like(batch.ce_weight),
        kl_weight=torch.zeros_like(batch.kl_weight),
        aux_weight=torch.zeros_like(batch.aux_weight),
        num_samples=0,
        num_tokens=0,
        num_label_tokens=0,
        num_kl_rows=0,
        reference_tokens=0,
    )
