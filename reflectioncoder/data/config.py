"""Typed configuration of the data room: loading, the dynamic mask, packing."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from reflectioncoder.errors import hint

STRATEGIES: tuple[str, ...] = (
    "all_mask",
    "random_token_mask",
    "sequential_token_mask",
    "random_block_mask",
    "sequential_block_mask",
    "block_mask",
)
NORMALISATIONS = ("sample", "token")
BLOCK_ORDERS = ("tce", "tec", "cte", "cet", "etc", "ect")


@dataclass
class DataConfig:
    """Which jsonl files to load and how to tokenise them."""

    files: list[str] = field(default_factory=list)
    """ReflectionSeq / generation jsonl files (SPEC §1)."""
    upsample: list[int] | None = None
    """Times each file is listed (the paper lists each reflection set twice); default 1 each."""
    max_len: int = 4096
    """Samples with more ids are dropped, counted and reported."""
    skip_bad: bool = False
    """False: stop at the first bad sample (DataError file:line:field). True: skip and report."""
    cache_dir: str | None = None
    """Where tokenised files are cached (key: tokenizer, file bytes, max_len); None: no cache."""
    num_workers: int = 1
    """Processes that tokenise (1: in this process); at most the usable cores (refused at the
    start of a run above them: they would only share the cores)."""
    validation_files: list[str] = field(default_factory=list)
    """Held-out jsonl files (the format of ``files``, checked the same way): their loss is
    computed every ``train.eval_every`` steps and at the end of training. Empty: none."""
    validation_fraction: float = 0.0
    """Instead of ``validation_files``: hold out this fraction of the distinct training
    samples (upsampled copies go together), drawn by ``train.seed``; they are never trained
    on. 0: none."""

    def __post_init__(self) -> None:
        if isinstance(self.files, str):
            self.files = [self.files]
        self.files = [str(f) for f in self.files]
        if self.upsample is not None:
            self.upsample = list(self.upsample)
            if len(self.upsample) != len(self.files):
                raise ValueError(
                    f"upsample: {len(self.upsample)} factors for {len(self.files)} files"
                )
            if any(not isinstance(u, int) or u < 1 for u in self.upsample):
                raise ValueError(f"upsample: factors must be ints >= 1, got {self.upsample}")
        if not isinstance(self.max_len, int) or self.max_len < 2:
            raise ValueError(f"max_len: must be an int >= 2, got {self.max_len!r}")
        if self.cache_dir is not None and Path(self.cache_dir).is_file():  # not after tokenising
            raise ValueError(f"cache_dir: {self.cache_dir} is a file; give a folder")
        if not isinstance(self.num_workers, int) or self.num_workers < 1:
            raise ValueError(f"num_workers: must be an int >= 1, got {self.num_workers!r}")
        if isinstance(self.validation_files, str):
            self.validation_files = [self.validation_files]
        self.validation_files = [str(f) for f in self.validation_files]
        if not 0 <= self.validation_fraction < 1:
            raise ValueError(
                f"validation_fraction: must be in [0, 1), got {self.validation_fraction!r}"
            )
        if self.validation_fraction and self.validation_files:
            raise ValueError(
                "validation_fraction: give validation_files or validation_fraction, not both"
            )


@dataclass
class MaskConfig:
    """The student's dynamic mask (SPEC §3) and which losses run (SPEC §2)."""

    strategies: tuple[str, ...] = ("block_mask",)
    """Enabled strategies; one drawn uniformly per sample. Empty with distill on: the student
    sees every token (the reference's behaviour, KL = 0)."""
    block_order: str = "tce"
    """Permutation of t, c, e for block_mask: the published command uses tce, the authors'
    code defaults to etc."""
    distill: bool = True
    """Reflection self-distillation (student pass). False: reflection samples train like
    generation samples (teacher CE only): the reference run without its --logit flag, which
    switches on the whole student pass."""
    kl: bool = True
    """The KL logit-alignment term (SPEC §2's "logit alignment"). False keeps the student's CE
    and drops the KL (a variant the reference has no flag for)."""

    def __post_init__(self) -> None:
        if isinstance(self.strategies, str):
            self.strategies = (self.strategies,)
        self.strategies = tuple(self.strategies)
        for s in self.strategies:
            if s not in STRATEGIES:
                raise ValueError(
                    f"strategies: unknown strategy {s!r}{hint(s, STRATEGIES)}; choose from "
                    f"{STRATEGIES}"
                )
        if len(set(self.strategies)) != len(self.strategies):
            raise ValueError(f"strategies: listed twice in {self.strategies}")
        if sorted(self.block_order) != ["c", "e", "t"]:
            raise ValueError(
                "block_order: must be a permutation of t, c, e (e.g. tce), "
                f"got {self.block_order!r}{hint(self.block_order, BLOCK_ORDERS)}"
            )


@dataclass
class PackingConfig:
    """How an optimizer step's samples become micro-batches."""

    max_tokens: int = 16384
    """Token budget per micro-batch: teacher + visible student tokens at the step (the masks
    are drawn when the step is planned); a sample over the budget gets a micro-batch of its
    own."""
    normalisation: str = "sample"
    """sample: mean over samples of CE_i + KL_i (the reference); token: CE and KL each
    averaged over all their tokens / rows of the step (SPEC §2)."""

    def __post_init__(self) -> None:
        if not isinstance(self.max_tokens, int) or self.max_tokens < 1:
            raise ValueError(f"max_tokens: must be an int >= 1, got {self.max_tokens!r}")
        if self.normalisation not in NORMALISATIONS:
            raise ValueError(
                f"normalisation: must be one of {NORMALISATIONS}, got {self.normalisation!r}"
                + hint(self.normalisation, NORMALISATIONS)
            )
