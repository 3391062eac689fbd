"""The run's schedules and step plan: pure functions of the config and the samples (so a resumed
run needs only its step), and the per-epoch report of what the planned steps computed."""

from __future__ import annotations

import hashlib
import itertools
import math
from typing import Any

import numpy as np

from reflectioncoder.config import OptimConfig, RunConfig, TrainConfig
from reflectioncoder.data.tokenize import TokenizedSample


def lr_at(step: int, total_steps: int, cfg: OptimConfig) -> float:
    """Learning rate of optimizer step ``step`` (from 0), as Hugging Face's schedulers give it.

    Linear warm-up over ceil(warmup_ratio * total) steps from 0, then cosine | linear decay to
    lr * min_lr_ratio, or constant.
    """
    warmup = math.ceil(cfg.warmup_ratio * total_steps)
    if step < warmup:
        return cfg.lr * step / max(1, warmup)
    if cfg.schedule == "constant":
        return cfg.lr
    progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
    if cfg.schedule == "cosine":
        factor = 0.5 * (1.0 + math.cos(math.pi * progress))
    else:
        factor = 1.0 - progress
    return cfg.lr * (cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * factor)


def no_step_learns(total_steps: int, cfg: RunConfig) -> str | None:
    """A warning when every step of the run has learning rate 0 (the paper's 512 samples a
    step over a small set: one step, inside the warm-up, which starts at 0): the run trains
    and saves a model that is the one it started from. None otherwise."""
    if any(lr_at(s, total_steps, cfg.optim) for s in range(min(total_steps, 2))):
        return None  # a step after the first has lr > 0 whenever the first step's schedule does
    spp = cfg.train.samples_per_step
    more = "more data or train.epochs" + ("" if spp is None else f", or fewer than {spp} "
                                          "train.samples_per_step")  # fmt: skip
    if cfg.train.max_steps == total_steps:  # a smoke test's max_steps=1 cut the run short
        more = "a larger train.max_steps"
    return (
        f"every optimizer step of this run has learning rate 0 ({total_steps} step(s); the "
        "warm-up starts at 0, as the authors' Trainer's): the model will not change; give it "
        f"more steps ({more}) or set optim.warmup_ratio=0"
    )


def plan_steps(lengths: list[int], cfg: TrainConfig) -> list[list[int]]:
    """Sample indices of every optimizer step: epochs of seeded permutations, cut into steps.

    A step takes ``samples_per_step`` samples, or consecutive samples up to ``tokens_per_step``
    tokens (at least one). The last step of the run may be smaller.
    """
    n = len(lengths)
    if n == 0:
        raise ValueError("data.files: no training samples (all dropped or none given)")
    total = max(1, int(cfg.epochs * n))
    order: list[int] = []
    epoch = 0
    while len(order) < total:
        order.extend(np.random.default_rng([cfg.seed, epoch]).permutation(n).tolist())
        epoch += 1
    order = order[:total]
    steps: list[list[int]] = []
    if cfg.samples_per_step is not None:
        k = cfg.samples_per_step
        steps = [order[i : i + k] for i in range(0, len(order), k)]
    else:
        cur: list[int] = []
        used = 0
        for i in order:
            if cur and used + lengths[i] > cfg.tokens_per_step:
                steps.append(cur)
                cur, used = [], 0
            cur.append(i)
            used += lengths[i]
        if cur:
            steps.append(cur)
    if cfg.max_steps is not None:
        steps = steps[: cfg.max_steps]
    return steps


def plan_fingerprint(samples: list[TokenizedSample], plan: list[list[int]]) -> str:
    """The sha256 of every step's samples' token ids, step by step: a resumed run must train the
    steps its checkpoint's run planned, on the same data (the step count alone misses other
    data of the same size, edited files, another seed)."""
    per_sample: dict[int, str] = {}
    digest = hashlib.sha256()
    for step in plan:
        for i in step:
            if i not in per_sample:  # epochs repeat samples
                per_sample[i] = samples[i].token_sha256()
            digest.update(per_sample[i].encode())
    return digest.hexdigest()


class EpochReport:
    """Per epoch of the step plan: the tokens the packed steps computed against what the
    reference recipe runs on the same samples (both passes padded), summed from the metrics
    rows; one line when a step ends an epoch (or the run). A resumed run counts from its
    first step."""

    def __init__(self, plan: list[list[int]], epoch_samples: int, start: int) -> None:
        self.ends = list(itertools.accumulate(len(s) for s in plan))  # samples up to each step
        self.epoch_samples, self.first = epoch_samples, start + 1
        self.tokens = self.reference = 0

    def add(self, row: dict[str, Any]) -> str | None:
        """Count step ``row["step"]``; the epoch's line when it ends one (or the run)."""
        step, n = row["step"], self.epoch_samples
        self.tokens += row["tokens"]
        self.reference += row["reference_tokens"]
        done, before = self.ends[step - 1], self.ends[step - 2] if step > 1 else 0
        ends_epoch = done // n > before // n
        if not ends_epoch and step < len(self.ends):
            return None
        # one step may span epochs (512 samples a step over a smaller set): both are said
        first = (self.ends[self.first - 2] if self.first > 1 else 0) // n + 1
        last = done // n if ends_epoch else -(-done // n)
        epoch = f"epoch {last}" if first >= last else f"epochs {first}-{last}"
        epoch += "" if ends_epoch else " (part)"
        steps = f"step {step}" if self.first == step else f"steps {self.first}-{step}"
        ratio = self.tokens / self.reference if self.reference else 0.0
        line = (
            f"{epoch}, {steps}: {self.tokens} tokens computed; the reference "
            f"recipe runs {self.reference} (both passes, padded): {ratio:.2f}x"
        )
        self.first, self.tokens, self.reference = step + 1, 0, 0
        return line
