"""The training sections of a run's configuration (``config.RunConfig``): ``optim``, ``train``,
``distributed``, ``checkpoint``, ``logging``; one dataclass each, checked in
``__post_init__`` (a ``ValueError`` naming the bad field)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from reflectioncoder.errors import check_field, hint

SCHEDULES = ("cosine", "linear", "constant")
BACKENDS = ("auto", "none", "deepspeed", "fsdp")
REPORTERS = ("tensorboard", "wandb", "mlflow", "trackio", "none")
DEVICES = ("auto", "cpu", "cuda")
MAX_TIMEOUT_MINUTES = 10**9  # ~1900 years; datetime.timedelta overflows not far above


@dataclass
class OptimConfig:
    """AdamW and its learning-rate schedule (the paper: lr 5e-5, cosine, 5% warm-up)."""

    lr: float = 5e-5
    """Peak learning rate."""
    weight_decay: float = 0.0
    """AdamW decoupled weight decay."""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW betas."""
    eps: float = 1e-8
    """AdamW epsilon."""
    schedule: str = "cosine"
    """cosine | linear | constant, after the warm-up."""
    warmup_ratio: float = 0.05
    """Fraction of the optimizer steps spent in linear warm-up from 0."""
    min_lr_ratio: float = 0.0
    """The schedule decays to lr * min_lr_ratio."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this (0: no clipping)."""

    def __post_init__(self) -> None:
        self.betas = tuple(self.betas)  # YAML gives lists
        check_field(self.lr > 0, "optim.lr", f"must be > 0, got {self.lr}")
        check_field(
            self.weight_decay >= 0, "optim.weight_decay", f"must be >= 0, got {self.weight_decay}"
        )
        check_field(
            len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas),
            "optim.betas",
            f"must be two floats in [0, 1), got {self.betas}",
        )
        check_field(self.eps > 0, "optim.eps", f"must be > 0, got {self.eps}")
        check_field(
            self.schedule in SCHEDULES,
            "optim.schedule",
            f"must be one of {SCHEDULES}, got {self.schedule!r}{hint(self.schedule, SCHEDULES)}",
        )
        check_field(
            0 <= self.warmup_ratio < 1,
            "optim.warmup_ratio",
            f"must be in [0, 1), got {self.warmup_ratio}",
        )
        check_field(
            0 <= self.min_lr_ratio <= 1,
            "optim.min_lr_ratio",
            f"must be in [0, 1], got {self.min_lr_ratio}",
        )
        check_field(self.grad_clip >= 0, "optim.grad_clip", f"must be >= 0, got {self.grad_clip}")


@dataclass
class TrainConfig:
    """The loop: how much data one optimizer step covers, how long to train, the seed."""

    epochs: float = 2.0
    """Passes over the (upsampled) data; fractional values allowed."""
    max_steps: int | None = None
    """Stop after this many optimizer steps (None: as many as ``epochs`` give)."""
    samples_per_step: int | None = 512
    """Samples per optimizer step across all ranks (the paper's global batch: 512)."""
    tokens_per_step: int | None = None
    """Instead of samples_per_step: fill each optimizer step up to this many sample tokens."""
    seed: int = 3407
    """Seed of the data order, the masks and the model built from scratch."""
    device: str = "auto"
    """auto (cuda when present) | cpu | cuda."""
    skip_nonfinite: bool = True
    """Skip the update (and count it) when the loss or the gradient norm is not finite."""
    max_skipped_steps: int = 10
    """Abort after this many skipped updates in a row: the run is broken, not unlucky."""
    eval_every: int = 0
    """Compute the held-out loss (``data.validation_files`` or ``data.validation_fraction``)
    every this many optimizer steps; it is always computed at the end of training. 0: only
    at the end."""
    threads: int | None = None
    """torch CPU threads of each process. None: the cores this process may use (its affinity
    mask capped by its cgroup's CPU quota: ``reflectioncoder.cpus``), shared among
    the ranks on this machine, less the cores other programs keep busy (load average); at
    least 1, never more than the cores (torch's own default takes every core in every rank);
    a --resume keeps the number the run used (its checkpoint records it)."""

    def __post_init__(self) -> None:
        check_field(self.epochs > 0, "train.epochs", f"must be > 0, got {self.epochs}")
        check_field(
            self.max_steps is None or self.max_steps > 0,
            "train.max_steps",
            f"must be > 0 or null, got {self.max_steps}",
        )
        check_field(
            (self.samples_per_step is None) != (self.tokens_per_step is None),
            "train.samples_per_step",
            "give exactly one of train.samples_per_step and train.tokens_per_step "
            "(set the other to null)",
        )
        check_field(
            self.samples_per_step is None or self.samples_per_step > 0,
            "train.samples_per_step",
            f"must be > 0, got {self.samples_per_step}",
        )
        check_field(
            self.tokens_per_step is None or self.tokens_per_step > 0,
            "train.tokens_per_step",
            f"must be > 0, got {self.tokens_per_step}",
        )
        check_field(  # numpy's generators take no negative seed: refused now, not at step 0
            self.seed >= 0, "train.seed", f"must be >= 0, got {self.seed}"
        )
        check_field(
            self.device in DEVICES,
            "train.device",
            f"must be auto | cpu | cuda, got {self.device!r}{hint(self.device, DEVICES)}",
        )
        check_field(
            self.threads is None or self.threads >= 1,
            "train.threads",
            f"must be >= 1 or null, got {self.threads}",
        )
        check_field(
            isinstance(self.eval_every, int) and self.eval_every >= 0,
            "train.eval_every",
            f"must be an int >= 0, got {self.eval_every!r}",
        )
        check_field(
            self.max_skipped_steps >= 1,
            "train.max_skipped_steps",
            f"must be >= 1, got {self.max_skipped_steps}",
        )


@dataclass
class DistributedConfig:
    """Data parallelism: one process, DeepSpeed ZeRO 1/2/3 under deepspeed or torchrun, or
    torch's FSDP2 under torchrun."""

    backend: str = "auto"
    """auto (deepspeed when launched with several ranks) | none | deepspeed | fsdp (torch's
    ``fully_shard`` per decoder layer and the root: fp32 master weights, gradients and AdamW
    states sharded over the ranks, bf16 weights gathered per layer; ``train.fsdp_engine``;
    ``zero_stage`` and ``deepspeed_config`` do not apply)."""
    zero_stage: int = 1
    """ZeRO stage 0-3 (the paper: 1; 3 for 33B/34B)."""
    deepspeed_config: str | None = None
    """A DeepSpeed JSON (the reference's format); its "auto" values are filled from this config."""
    offload_optimizer: bool | str = "auto"
    """The fp32 master weights, AdamW's states and its step in CPU memory: under DeepSpeed,
    ZeRO-Offload with DeepSpeed's CPU Adam (also when the DeepSpeed JSON asks for an offload
    device); in one process without DeepSpeed (one rank only: true on several is refused),
    torch's fused AdamW on the host, the fp32 gradient sums kept on the GPU. ``auto``: on (on
    CUDA, DeepSpeed ZeRO-1/2 or one process) when the weights, gradients and optimizer states
    leave no room for even fully checkpointed activations
    (``memory_plan.needs_offload``), else off."""
    fp32_grad_accum: bool | str = "auto"
    """Sum a step's gradients over micro-batches and ranks in fp32 when the weights are bf16,
    under DeepSpeed ZeRO-1/2/3: ``data_types.grad_accum_dtype`` fp32 (ZeRO-1: the BF16
    optimizer's full fp32 gradient; ZeRO-2/3: an fp32 partition, 1/ranks of it; an offloaded
    ZeRO-1 runs as ZeRO-2 whatever this says, since DeepSpeed's would keep both) and
    ``communication_data_type`` fp32 (the cross-rank sum; twice bf16's bytes); a DeepSpeed
    JSON's own values of either win. tests/test_zero_fp32_sums.py measures each stage.
    ``auto``: on at ZeRO-1/2/3 (DeepSpeed's ZeRO-0 cannot); ``false``: both left to DeepSpeed
    (bf16). One process and ``backend: fsdp`` always do: their engines own the fp32 sums."""
    timeout_minutes: int = 30
    """Collective timeout."""

    def __post_init__(self) -> None:
        check_field(
            self.backend in BACKENDS,
            "distributed.backend",
            f"must be one of {BACKENDS}, got {self.backend!r}{hint(self.backend, BACKENDS)}",
        )
        fsdp = self.backend == "fsdp"
        check_field(
            not (fsdp and self.offload_optimizer is True),
            "distributed.offload_optimizer",
            "true is not supported with backend fsdp (its optimizer states stay sharded on the "
            "GPUs): use false or auto, or backend deepspeed (ZeRO-Offload)",
        )
        check_field(
            not (fsdp and self.fp32_grad_accum is False),
            "distributed.fp32_grad_accum",
            "false does not apply to backend fsdp (it always sums in fp32): use auto",
        )
        check_field(
            not (fsdp and self.deepspeed_config),
            "distributed.deepspeed_config",
            "does not apply to backend fsdp: remove it, or use backend deepspeed",
        )
        check_field(
            self.zero_stage in (0, 1, 2, 3),
            "distributed.zero_stage",
            f"must be 0, 1, 2 or 3, got {self.zero_stage!r}",
        )
        ds_json = self.deepspeed_config
        state = "a folder, not a file" if ds_json and Path(ds_json).is_dir() else "file not found"
        check_field(
            ds_json is None or Path(ds_json).is_file(),
            "distributed.deepspeed_config",
            f"{state}: {ds_json}",
        )
        check_field(
            self.offload_optimizer in (True, False, "auto"),
            "distributed.offload_optimizer",
            f"must be true | false | auto, got {self.offload_optimizer!r}"
            + hint(self.offload_optimizer, ("auto",)),
        )
        check_field(
            self.fp32_grad_accum in (True, False, "auto"),
            "distributed.fp32_grad_accum",
            f"must be true | false | auto, got {self.fp32_grad_accum!r}"
            + hint(self.fp32_grad_accum, ("auto",)),
        )
        check_field(
            0 < self.timeout_minutes <= MAX_TIMEOUT_MINUTES,
            "distributed.timeout_minutes",
            f"must be in [1, {MAX_TIMEOUT_MINUTES}], got {self.timeout_minutes}",
        )


@dataclass
class CheckpointConfig:
    """Where the run writes, and how often it saves a resumable checkpoint."""

    out_dir: str = "runs/default"
    """Run folder: checkpoints, metrics.jsonl, TensorBoard events, loss plot, final model."""
    save_every: int = 0
    """Save a checkpoint every this many optimizer steps (0: only at the end)."""
    keep_last: int = 2
    """Keep the last K step checkpoints (older ones are deleted; never the newest)."""
    model_only: bool = False
    """Step checkpoints hold the model only (weights, tokenizer, config: the authors'
    --save_only_model, ~1/8 of the bytes); they cannot be resumed from."""
    save_final: bool = True
    """Save the final model (Hugging Face format) to OUT/final."""

    def __post_init__(self) -> None:
        check_field(bool(self.out_dir), "checkpoint.out_dir", "must be a non-empty path")
        check_field(
            self.save_every >= 0, "checkpoint.save_every", f"must be >= 0, got {self.save_every}"
        )
        check_field(
            self.keep_last >= 1, "checkpoint.keep_last", f"must be >= 1, got {self.keep_last}"
        )


@dataclass
class LoggingConfig:
    """Metrics: OUT/metrics.jsonl every step, TensorBoard, a progress bar, a loss plot."""

    log_every: int = 1
    """Write a metrics row every this many optimizer steps."""
    report_to: list[str] = field(default_factory=lambda: ["tensorboard"])
    """Experiment trackers that get the metrics rows' scalars and the config (rank 0, offline by
    default): tensorboard, wandb, mlflow, trackio, or none (``train.reporters``)."""
    tensorboard: bool = True
    """False leaves tensorboard out of ``report_to`` (the switch configs had before it)."""
    project: str = "reflectioncoder"
    """The trackers' project (W&B project, MLflow experiment, trackio project)."""
    run_name: str | None = None
    """The run's name in the trackers (None: ``checkpoint.out_dir``'s parent, its name and the
    start time, ``demo-train-20261206-0153``); a --resume keeps the run's recorded name."""
    progress: bool = True
    """Show progress (rank 0): a live bar on a terminal, else a plain line every print_every
    steps and one per data phase. False: none at all (``--no-progress``)."""
    print_every: int | None = None
    """Steps between plain progress lines when the output is not a terminal (None: ~20 lines)."""
    plot: bool = True
    """Draw OUT/loss.png at the end of the run."""
    split_ce: bool = True
    """Log teacher CE and student CE separately (one extra no-grad loss pass on logging steps)."""
    peak_tflops: float | None = None
    """Peak bf16 TFLOP/s of one accelerator, for MFU (None: guessed from the GPU name)."""

    @property
    def trackers(self) -> list[str]:
        """The trackers this run reports to (``report_to`` less tensorboard when it is off)."""
        off = {"none"} if self.tensorboard else {"none", "tensorboard"}
        return [r for r in self.report_to if r not in off]

    def __post_init__(self) -> None:
        check_field(self.log_every >= 1, "logging.log_every", f"must be >= 1, got {self.log_every}")
        unknown = [r for r in self.report_to if r not in REPORTERS]
        check_field(
            not unknown,
            "logging.report_to",
            f"unknown {unknown}{hint(unknown[0] if unknown else None, REPORTERS)}; known: "
            + ", ".join(REPORTERS),
        )
        check_field(
            "none" not in self.report_to or len(self.report_to) == 1,
            "logging.report_to",
            f"none goes alone, got {self.report_to}",
        )
        check_field(
            self.print_every is None or self.print_every >= 1,
            "logging.print_every",
            f"must be >= 1 or null, got {self.print_every}",
        )
        check_field(
            self.peak_tflops is None or self.peak_tflops > 0,
            "logging.peak_tflops",
            f"must be > 0 or null, got {self.peak_tflops}",
        )
