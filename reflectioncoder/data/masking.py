"""The dynamic mask of SPEC §3: what the student sees at optimizer step k.

Split in two, so that the choices are made once per step and applied per micro-batch:
- ``draw_masks`` (host, per sample, seeded by (seed, step, uid)): picks the strategy and turns
  it into a per-token ``key`` plus a per-sample ``threshold``: a body token is hidden iff
  ``key < threshold``. Tokens before ``start`` and the token at ``end`` are always hidden.
- ``apply_masks_host`` (vectorised over the whole micro-batch): visibility, then compaction into
  student gather indices, position ids (original, gapped) and labels. It runs on the trainer's
  background thread, off the step's critical path, so training needs no device kernel for it
  (one is kept and measured in ``bench/mask_kernel.py``).
Call it when the optimizer step is known (the trainer's step), never in a data-loader worker.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from reflectioncoder.data.config import MaskConfig
from reflectioncoder.data.tokenize import TokenizedSample

NEVER = np.iinfo(np.int32).max  # key of a token no strategy hides
_TYPE_LETTER = {"text": "t", "code": "c", "execution": "e"}


def mask_rate(step: int, total_steps: int) -> float:
    """r = min((step + 1) / total_steps, 1) in float64; 0 when total_steps is 0 (SPEC §3)."""
    if step < 0:
        raise ValueError(f"step: must be >= 0, got {step}")
    if total_steps < 0:
        raise ValueError(f"total_steps: must be >= 0, got {total_steps}")
    if total_steps == 0:
        return 0.0
    return min((step + 1) / total_steps, 1.0)


def hide_count(n: int, rate: float) -> int:
    """ceil(n * r) in float64, as the reference (n=100, r=0.07 hides 8)."""
    return int(math.ceil(float(n) * float(rate)))


def block_mask_types(rate: float) -> int:
    """How many block types block_mask hides: 1, from r >= 0.33 two, from r >= 0.67 three."""
    return 1 + int(rate >= 0.33) + int(rate >= 0.67)


@dataclass
class MaskPlan:
    """The random choices for the students of some reflection samples at one step.

    keys: (T,) int32 over the samples' ids concatenated; offsets: (S+1,) int64 into them.
    starts, ends, thresholds: (S,) int64 (``starts = 0, ends = -1``: nothing hidden, the
    no-strategy case). student_lens: host list of each student's length.
    """

    keys: torch.Tensor
    offsets: torch.Tensor
    starts: torch.Tensor
    ends: torch.Tensor
    thresholds: torch.Tensor
    student_lens: list[int]
    strategies: list[str | None]
    rate: float


def select_masks(plan: MaskPlan, rows: Sequence[int]) -> MaskPlan:
    """The draws of some of ``plan``'s students (``rows``, in that order): a step's masks are
    drawn once, and each micro-batch takes its students' share."""
    offsets = plan.offsets.numpy()
    keys = [plan.keys[offsets[r] : offsets[r + 1]] for r in rows]
    lens = [int(offsets[r + 1] - offsets[r]) for r in rows]
    index = torch.tensor(list(rows), dtype=torch.int64)
    return MaskPlan(
        keys=torch.cat(keys) if keys else torch.zeros(0, dtype=torch.int32),
        offsets=torch.tensor([0, *np.cumsum(lens).tolist()], dtype=torch.int64),
        starts=plan.starts[index],
        ends=plan.ends[index],
        thresholds=plan.thresholds[index],
        student_lens=[plan.student_lens[r] for r in rows],
        strategies=[plan.strategies[r] for r in rows],
        rate=plan.rate,
    )


def sample_rng(seed: int, step: int, uid: int) -> np.random.Generator:
    """The generator of one sample's draws: a function of (seed, step, uid) only, so a
    resumed run (or another rank, or a worker) draws the same masks."""
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, int(step), int(uid)])


def sample_keys(
    sample: TokenizedSample, strategy: str | None, rate: float, block_order: str, rng
) -> tuple[np.ndarray, int, int, int]:
    """One sample's (keys (L,) int32, start, end, threshold) for ``strategy`` at ``rate``."""
    length = len(sample)
    keys = np.full(length, NEVER, dtype=np.int32)
    if strategy is None:  # distillation on, no strategy: the student sees every token
        return keys, 0, -1, 0
    start, end = sample.body_start, sample.body_end
    n_tok = end - start
    blocks = sample.blocks
    if strategy == "all_mask":
        keys[start:end] = 0
        return keys, start, end, 1
    if strategy in ("random_token_mask", "sequential_token_mask"):
        if strategy == "random_token_mask":
            keys[start:end] = rng.permutation(n_tok).astype(np.int32)
        else:
            keys[start:end] = np.arange(n_tok, dtype=np.int32)
        return keys, start, end, hide_count(n_tok, rate)
    if strategy in ("random_block_mask", "sequential_block_mask", "block_mask"):
        n_blocks = len(blocks)
        if strategy == "random_block_mask":
            ranks = rng.permutation(n_blocks)
            threshold = hide_count(n_blocks, rate)
        elif strategy == "sequential_block_mask":
            ranks = np.arange(n_blocks)
            threshold = hide_count(n_blocks, rate)
        else:
            ranks = np.array([block_order.index(_TYPE_LETTER[b[2]]) for b in blocks], np.int64)
            threshold = block_mask_types(rate)
        if n_blocks:
            bounds = np.asarray([(b[0], b[1]) for b in blocks], dtype=np.int64)
            lens = bounds[:, 1] - bounds[:, 0]
            idx = np.repeat(bounds[:, 0] - np.cumsum(lens) + lens, lens) + np.arange(lens.sum())
            keys[idx] = np.repeat(ranks.astype(np.int32), lens)
        return keys, start, end, threshold
    raise ValueError(f"strategy: unknown {strategy!r}")


def draw_masks(
    samples: Sequence[TokenizedSample],
    step: int,
    total_steps: int,
    cfg: MaskConfig,
    seed: int,
) -> MaskPlan:
    """Draw the students' masks of reflection ``samples`` at optimizer ``step`` (host).

    One strategy is drawn uniformly per sample among ``cfg.strategies``; every draw comes from
    ``sample_rng(seed, step, sample.uid)``.
    """
    rate = mask_rate(step, total_steps)
    keys, starts, ends, thresholds, lens, strategies = [], [], [], [], [], []
    offsets = [0]
    for sample in samples:
        if not sample.is_reflection:
            raise ValueError(f"samples: {sample.source} is a generation sample (no student)")
        rng = sample_rng(seed, step, sample.uid)
        strategy = None
        if cfg.strategies:
            strategy = cfg.strategies[int(rng.integers(len(cfg.strategies)))]
        k, start, end, threshold = sample_keys(sample, strategy, rate, cfg.block_order, rng)
        keys.append(k)
        starts.append(start)
        ends.append(end)
        thresholds.append(threshold)
        strategies.append(strategy)
        offsets.append(offsets[-1] + len(k))
        if strategy is None:
            lens.append(len(k))
        else:  # hidden: [0, start), the body tokens with key < threshold, and `end`
            hidden = start + int((k[start:end] < threshold).sum()) + int(end < len(k))
            lens.append(len(k) - hidden)
    cat = np.concatenate(keys) if keys else np.zeros(0, np.int32)
    return MaskPlan(
        keys=torch.from_numpy(cat),
        offsets=torch.tensor(offsets, dtype=torch.int64),
        starts=torch.tensor(starts, dtype=torch.int64),
        ends=torch.tensor(ends, dtype=torch.int64),
        thresholds=torch.tensor(thresholds, dtype=torch.int64),
        student_lens=lens,
        strategies=strategies,
        rate=rate,
    )


def _positions(plan: MaskPlan) -> tuple[np.ndarray, np.ndarray]:
    """(segment of each token, position of each token in its sample), both (T,) int64."""
    offsets = plan.offsets.numpy()
    lens = np.diff(offsets)
    seg = np.repeat(np.arange(lens.size), lens)
    return seg, np.arange(int(offsets[-1])) - offsets[:-1][seg]


def _visible(plan: MaskPlan, seg: np.ndarray, pos: np.ndarray) -> np.ndarray:
    # Keys outside the body are NEVER (above any threshold), so the body test is implicit.
    hidden = pos < plan.starts.numpy()[seg]
    hidden |= pos == plan.ends.numpy()[seg]
    hidden |= plan.keys.numpy() < plan.thresholds.numpy()[seg]
    return ~hidden


def visibility_host(plan: MaskPlan) -> torch.Tensor:
    """(T,) bool: which of the samples' tokens the student sees (vectorised)."""
    seg, pos = _positions(plan)
    return torch.from_numpy(_visible(plan, seg, pos))


@dataclass
class StudentTokens:
    """The students of a MaskPlan, compacted. gather: (Ts,) int64 indices into the samples'
    concatenated ids; input_ids, position_ids (original positions), labels: (Ts,) int64;
    out_offsets: (S+1,) int64 student offsets."""

    gather: torch.Tensor
    input_ids: torch.Tensor
    position_ids: torch.Tensor
    labels: torch.Tensor
    out_offsets: torch.Tensor


def apply_masks_host(
    plan: MaskPlan, ids: torch.Tensor, student_labels: torch.Tensor
) -> StudentTokens:
    """Visibility then compaction over a whole micro-batch (torch, no per-token Python loop).

    ids, student_labels: (T,) int64, the samples' ids / student labels concatenated.
    """
    total = int(plan.offsets[-1])
    if ids.shape != (total,) or student_labels.shape != (total,):
        raise ValueError(f"ids, student_labels: expected ({total},), got {tuple(ids.shape)}")
    seg, pos = _positions(plan)
    gather = np.flatnonzero(_visible(plan, seg, pos))
    out_offsets = torch.zeros(len(plan.student_lens) + 1, dtype=torch.int64)
    out_offsets[1:] = torch.tensor(plan.student_lens, dtype=torch.int64).cumsum(0)
    # numpy indexing: torch's index kernel is far slower on small CPU tensors.
    return StudentTokens(
        gather=torch.from_numpy(gather),
        input_ids=torch.from_numpy(ids.numpy()[gather]),
        position_ids=torch.from_numpy(pos[gather]),
        labels=torch.from_numpy(student_labels.numpy()[gather]),
        out_offsets=out_offsets,
    )
