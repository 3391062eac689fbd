"""Typed configuration of a training run: one dataclass per component.

A run is a ``RunConfig``: ``model``, ``data``, ``mask`` and ``packing`` (the data room's
``DataConfig``, ``MaskConfig``, ``PackingConfig``), ``optim``, ``train``, ``distributed``,
``checkpoint``, ``logging``. Every dataclass
checks itself in ``__post_init__`` and raises ``ValueError`` naming the bad field.

``config_loader.load_config`` builds one from a preset (``config_presets``) or a YAML file,
then command-line overrides.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from reflectioncoder.data.config import DataConfig, MaskConfig, PackingConfig
from reflectioncoder.errors import did_you_mean

SCHEDULES = ("cosine", "linear", "constant")
DTYPES = ("auto", "bf16", "fp16", "fp32")
BACKENDS = ("auto", "none", "deepspeed", "fsdp")
REPORTERS = ("tensorboard", "wandb", "mlflow", "trackio", "none")
# "auto" and kernels/varlen_attention.py's BACKENDS, written out so that reading a config
# imports no torch (tests/test_varlen_attention.py checks that the two agree).
ATTENTION = ("auto", "flash_attn_3", "flash_attn_4", "flash_attn", "torch_varlen", "sdpa")
CHECKPOINTING_POLICIES = ("full", "save_gemms", "mlp_rerun", "offload", "alternate", "auto")
MIXED_PRECISIONS = ("masters", "autocast")


def _check(cond: bool, name: str, msg: str) -> None:
    if not cond:
        raise ValueError(f"{name}: {msg}")


# model.build_tiny_llama's keyword arguments that ``model.arch`` may set
ARCH_SIZES = ("hidden_size", "num_layers", "num_heads", "num_kv_heads")
ARCH_FIELDS = (*ARCH_SIZES, "intermediate_size", "max_position_embeddings",
               "tie_word_embeddings", "rope_theta")  # fmt: skip


def _check_arch(arch: dict[str, Any]) -> None:
    """``model.arch`` checked when the config is read (``--print-config`` too), not as a
    TypeError or a bare ``num_heads: ...`` once the data is tokenised."""
    for key in arch:
        hint = did_you_mean(key, ARCH_FIELDS, "model.arch")
        _check(key in ARCH_FIELDS, f"model.arch.{key}",
               f"unknown field{hint}; known: {', '.join(ARCH_FIELDS)}")  # fmt: skip
    for key in ARCH_SIZES:
        value = arch.get(key, 1)
        _check(isinstance(value, int) and not isinstance(value, bool) and value >= 1,
               f"model.arch.{key}", f"must be a positive integer, got {value!r}")  # fmt: skip
    if "hidden_size" in arch or "num_heads" in arch or "num_kv_heads" in arch:
        width, heads = arch.get("hidden_size", 64), arch.get("num_heads", 4)
        kv = arch.get("num_kv_heads", 2)
        _check(width % heads == 0 and heads % kv == 0, "model.arch",
               f"hidden_size {width} must divide by num_heads {heads}, which must divide by "
               f"num_kv_heads {kv}")  # fmt: skip


@dataclass
class ModelConfig:
    """The model: a Hugging Face checkpoint, or a small Llama built from ``arch`` (tests, demo)."""

    name_or_path: str | None = None
    """Hugging Face model folder, or a hub name already in the local Hugging Face cache (never
    downloaded); None builds ``arch``."""
    tokenizer: str | None = None
    """Tokenizer folder; None: that of ``name_or_path``, or one trained on the data."""
    tokenizer_vocab_size: int = 512
    """Vocabulary of the tokenizer trained locally when neither path is given."""
    arch: dict[str, Any] = field(default_factory=dict)
    """``model.build_tiny_llama`` keyword arguments for a model built from scratch
    (hidden_size, num_layers, num_heads, num_kv_heads, intermediate_size, ...)."""
    dtype: str = "auto"
    """Training dtype of the weights' compute: auto = bf16 on GPU, fp32 on CPU."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass (the paper: on)."""
    checkpointing_policy: str = "auto"
    """With checkpointing on, what each decoder layer keeps
    (``reflectioncoder.activation_checkpointing``): ``full`` (recompute every layer),
    ``save_gemms`` (keep GEMM and attention outputs, recompute the element-wise ops),
    ``mlp_rerun`` (keep what ``save_gemms`` keeps of the attention half, nothing of the MLP:
    the backward reruns the element-wise ops and the MLP's gate / up GEMMs; half
    ``save_gemms``' bytes),
    ``offload`` (keep what ``save_gemms`` keeps, in host memory: copied out on a side CUDA
    stream in the forward and back ahead of the layer's backward; those layers are not
    compiled), ``alternate`` (recompute every second layer), ``auto`` (on CUDA: the least
    recompute whose activations fit the GPU beside the weights, gradients and optimizer
    states, planned once at start, layer by layer, offloading the first layers as far as the
    host link carries them in time when ``activation_offload`` is on; on a CPU: ``full``)."""
    activation_offload: bool = True
    """Whether ``checkpointing_policy: auto`` may give layers ``offload`` (on CUDA). Off: a
    host with little free pinned memory, or many ranks sharing a slow host link."""
    compile: bool | str = "auto"
    """``torch.compile`` each decoder layer (regional; attention as a custom op, so no graph
    break and no recompile across micro-batch lengths: ``model.compile_layers``). ``auto``: on
    when training on CUDA, off on a CPU (compiling there costs more than it saves)."""
    fused_projections: bool = False
    """q/k/v as one GEMM and gate/up as one (``fused_projections``; the weights stay Hugging
    Face's own). Off: on the CPU the whole forward + backward measured 1.5-13% slower with it
    (bench.bench_fused_projections: the slices are strided, the backward concatenates their
    gradients), and on a GPU Liger's RoPE and SwiGLU copy the slices, about what the one GEMM
    saves (docs/training.md); a GPU measurement is owed. Not with ZeRO-3, whose hooks gather
    each projection's own weights."""
    attention: str = "auto"
    """The packed attention's kernel (``reflectioncoder.kernels.varlen_attention``): ``auto``
    takes the first that runs of ``flash_attn_3`` (FA3's Hopper build, from source),
    ``flash_attn_4`` (FlashAttention-4, Hopper / Blackwell, extra ``hopper``), ``flash_attn``
    (extra ``gpu``), ``torch_varlen`` (torch's
    own, CUDA) and ``sdpa`` (the CPU); naming one that cannot run here fails at start, in one
    line saying why."""
    mixed_precision: str = "masters"
    """bf16 in one process (``distributed.backend=none``): ``masters`` keeps the weights in
    bf16 and fp32 master weights, fp32 gradient sums and the AdamW states in the optimizer (as
    DeepSpeed's bf16 optimizer does); ``autocast`` keeps fp32 weights and computes under
    torch.autocast (each layer's inputs cast again per GEMM, an fp32 residual stream)."""

    def __post_init__(self) -> None:
        _check(self.dtype in DTYPES, "model.dtype", f"must be one of {DTYPES}, got {self.dtype!r}")
        _check(
            self.checkpointing_policy in CHECKPOINTING_POLICIES,
            "model.checkpointing_policy",
            f"must be {' | '.join(CHECKPOINTING_POLICIES)}, got {self.checkpointing_policy!r}",
        )
        _check(
            isinstance(self.activation_offload, bool),
            "model.activation_offload",
            f"must be true | false, got {self.activation_offload!r}",
        )
        _check(
            self.compile in (True, False, "auto"),
            "model.compile",
            f"must be true | false | auto, got {self.compile!r}",
        )
        _check(
            self.attention in ATTENTION,
            "model.attention",
            f"must be {' | '.join(ATTENTION)}, got {self.attention!r}",
        )
        _check(
            self.mixed_precision in MIXED_PRECISIONS,
            "model.mixed_precision",
            f"must be {' | '.join(MIXED_PRECISIONS)}, got {self.mixed_precision!r}",
        )
        _check(
            self.name_or_path is not None or bool(self.arch),
            "model.arch",
            "give model.name_or_path or model.arch (a LlamaConfig to build from scratch)",
        )
        _check_arch(self.arch)
        _check(
            isinstance(self.tokenizer_vocab_size, int) and self.tokenizer_vocab_size >= 300,
            "model.tokenizer_vocab_size",
            f"must be an int >= 300, got {self.tokenizer_vocab_size!r}",
        )


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
        _check(self.lr > 0, "optim.lr", f"must be > 0, got {self.lr}")
        _check(
            self.weight_decay >= 0, "optim.weight_decay", f"must be >= 0, got {self.weight_decay}"
        )
        _check(
            len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas),
            "optim.betas",
            f"must be two floats in [0, 1), got {self.betas}",
        )
        _check(self.eps > 0, "optim.eps", f"must be > 0, got {self.eps}")
        _check(
            self.schedule in SCHEDULES,
            "optim.schedule",
            f"must be one of {SCHEDULES}, got {self.schedule!r}",
        )
        _check(
            0 <= self.warmup_ratio < 1,
            "optim.warmup_ratio",
            f"must be in [0, 1), got {self.warmup_ratio}",
        )
        _check(
            0 <= self.min_lr_ratio <= 1,
            "optim.min_lr_ratio",
            f"must be in [0, 1], got {self.min_lr_ratio}",
        )
        _check(self.grad_clip >= 0, "optim.grad_clip", f"must be >= 0, got {self.grad_clip}")


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
    """torch CPU threads of each process. None: the cores this process may use, shared among
    the ranks on this machine, less the cores other programs keep busy (load average); at
    least 1, never more than the cores (torch's own default takes every core in every rank)."""

    def __post_init__(self) -> None:
        _check(self.epochs > 0, "train.epochs", f"must be > 0, got {self.epochs}")
        _check(
            self.max_steps is None or self.max_steps > 0,
            "train.max_steps",
            f"must be > 0 or null, got {self.max_steps}",
        )
        _check(
            (self.samples_per_step is None) != (self.tokens_per_step is None),
            "train.samples_per_step",
            "give exactly one of train.samples_per_step and train.tokens_per_step "
            "(set the other to null)",
        )
        _check(
            self.samples_per_step is None or self.samples_per_step > 0,
            "train.samples_per_step",
            f"must be > 0, got {self.samples_per_step}",
        )
        _check(
            self.tokens_per_step is None or self.tokens_per_step > 0,
            "train.tokens_per_step",
            f"must be > 0, got {self.tokens_per_step}",
        )
        _check(
            self.device in ("auto", "cpu", "cuda"),
            "train.device",
            f"must be auto | cpu | cuda, got {self.device!r}",
        )
        _check(
            self.threads is None or self.threads >= 1,
            "train.threads",
            f"must be >= 1 or null, got {self.threads}",
        )
        _check(
            isinstance(self.eval_every, int) and self.eval_every >= 0,
            "train.eval_every",
            f"must be an int >= 0, got {self.eval_every!r}",
        )
        _check(
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
        _check(
            self.backend in BACKENDS,
            "distributed.backend",
            f"must be one of {BACKENDS}, got {self.backend!r}",
        )
        fsdp = self.backend == "fsdp"
        _check(
            not (fsdp and self.offload_optimizer is True),
            "distributed.offload_optimizer",
            "true is not supported with backend fsdp (its optimizer states stay sharded on the "
            "GPUs): use false or auto, or backend deepspeed (ZeRO-Offload)",
        )
        _check(
            not (fsdp and self.fp32_grad_accum is False),
            "distributed.fp32_grad_accum",
            "false does not apply to backend fsdp (it always sums in fp32): use auto",
        )
        _check(
            not (fsdp and self.deepspeed_config),
            "distributed.deepspeed_config",
            "does not apply to backend fsdp: remove it, or use backend deepspeed",
        )
        _check(
            self.zero_stage in (0, 1, 2, 3),
            "distributed.zero_stage",
            f"must be 0, 1, 2 or 3, got {self.zero_stage!r}",
        )
        ds_json = self.deepspeed_config
        state = "a folder, not a file" if ds_json and Path(ds_json).is_dir() else "file not found"
        _check(
            ds_json is None or Path(ds_json).is_file(),
            "distributed.deepspeed_config",
            f"{state}: {ds_json}",
        )
        _check(
            self.offload_optimizer in (True, False, "auto"),
            "distributed.offload_optimizer",
            f"must be true | false | auto, got {self.offload_optimizer!r}",
        )
        _check(
            self.fp32_grad_accum in (True, False, "auto"),
            "distributed.fp32_grad_accum",
            f"must be true | false | auto, got {self.fp32_grad_accum!r}",
        )
        _check(
            self.timeout_minutes > 0,
            "distributed.timeout_minutes",
            f"must be > 0, got {self.timeout_minutes}",
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
        _check(bool(self.out_dir), "checkpoint.out_dir", "must be a non-empty path")
        _check(
            self.save_every >= 0, "checkpoint.save_every", f"must be >= 0, got {self.save_every}"
        )
        _check(self.keep_last >= 1, "checkpoint.keep_last", f"must be >= 1, got {self.keep_last}")


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
    """The run's name in the trackers (None: the name of ``checkpoint.out_dir``)."""
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
        _check(self.log_every >= 1, "logging.log_every", f"must be >= 1, got {self.log_every}")
        unknown = [r for r in self.report_to if r not in REPORTERS]
        _check(
            not unknown,
            "logging.report_to",
            f"unknown {unknown}; known: {', '.join(REPORTERS)}",
        )
        _check(
            "none" not in self.report_to or len(self.report_to) == 1,
            "logging.report_to",
            f"none goes alone, got {self.report_to}",
        )
        _check(
            self.print_every is None or self.print_every >= 1,
            "logging.print_every",
            f"must be >= 1 or null, got {self.print_every}",
        )
        _check(
            self.peak_tflops is None or self.peak_tflops > 0,
            "logging.peak_tflops",
            f"must be > 0 or null, got {self.peak_tflops}",
        )


@dataclass
class RunConfig:
    """A whole training run."""

    model: ModelConfig
    data: DataConfig = field(default_factory=DataConfig)
    mask: MaskConfig = field(default_factory=MaskConfig)
    packing: PackingConfig = field(default_factory=PackingConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (YAML-serialisable)."""
        return _to_plain(dataclasses.asdict(self))

    def save(self, path: str | Path) -> None:
        """Write the config as YAML (the run folder keeps the exact config it ran with)."""
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))


def _to_plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _to_plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_to_plain(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj
