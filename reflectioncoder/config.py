"""Typed configuration of a training run: one dataclass per component, presets, YAML, overrides.

A run is a ``RunConfig``: ``model``, ``data``, ``mask`` and ``packing`` (the data room's
``DataConfig``, ``MaskConfig``, ``PackingConfig``), ``optim``, ``train``, ``distributed``,
``checkpoint``, ``logging``. Every dataclass
checks itself in ``__post_init__`` and raises ``ValueError`` naming the bad field.

Sources, later ones win: a preset (``tiny`` | ``paper``) or a YAML file, then command-line
overrides ``section.field=value`` (values parsed as YAML: ``1e-4``, ``true``, ``[a, b]``).
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from reflectioncoder.data.config import DataConfig, MaskConfig, PackingConfig
from reflectioncoder.errors import ConfigError, UsageError

SCHEDULES = ("cosine", "linear", "constant")
DTYPES = ("auto", "bf16", "fp16", "fp32")
BACKENDS = ("auto", "none", "deepspeed")
REPORTERS = ("tensorboard", "wandb", "mlflow", "trackio", "none")


def _check(cond: bool, name: str, msg: str) -> None:
    if not cond:
        raise ValueError(f"{name}: {msg}")


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
    checkpointing_policy: str = "full"
    """With checkpointing on, what each decoder layer keeps (``model.CHECKPOINTING_POLICIES``):
    ``full`` (recompute every layer), ``save_gemms`` (keep GEMM and attention outputs,
    recompute the element-wise ops), ``alternate`` (recompute every second layer)."""
    compile: bool = False
    """``torch.compile`` each decoder layer (regional; attention as a custom op, so no graph
    break and no recompile across micro-batch lengths: ``model.compile_layers``)."""
    mixed_precision: str = "masters"
    """bf16 in one process (``distributed.backend=none``): ``masters`` keeps the weights in
    bf16 and fp32 master weights, fp32 gradient sums and the AdamW states in the optimizer (as
    DeepSpeed's bf16 optimizer does); ``autocast`` keeps fp32 weights and computes under
    torch.autocast (each layer's inputs cast again per GEMM, an fp32 residual stream)."""

    def __post_init__(self) -> None:
        _check(self.dtype in DTYPES, "model.dtype", f"must be one of {DTYPES}, got {self.dtype!r}")
        _check(
            self.checkpointing_policy in ("full", "save_gemms", "alternate"),
            "model.checkpointing_policy",
            f"must be full | save_gemms | alternate, got {self.checkpointing_policy!r}",
        )
        _check(
            self.mixed_precision in ("masters", "autocast"),
            "model.mixed_precision",
            f"must be masters | autocast, got {self.mixed_precision!r}",
        )
        _check(
            self.name_or_path is not None or bool(self.arch),
            "model.arch",
            "give model.name_or_path or model.arch (a LlamaConfig to build from scratch)",
        )
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
            self.max_skipped_steps >= 1,
            "train.max_skipped_steps",
            f"must be >= 1, got {self.max_skipped_steps}",
        )


@dataclass
class DistributedConfig:
    """Data parallelism: one process, or DeepSpeed ZeRO 1/2/3 under deepspeed or torchrun."""

    backend: str = "auto"
    """auto (deepspeed when launched with several ranks) | none | deepspeed."""
    zero_stage: int = 1
    """ZeRO stage 0-3 (the paper: 1; 3 for 33B/34B)."""
    deepspeed_config: str | None = None
    """A DeepSpeed JSON (the reference's format); its "auto" values are filled from this config."""
    offload_optimizer: bool = False
    """ZeRO-Offload the optimizer states (and the step) to CPU memory, run by DeepSpeed's CPU
    Adam (also when the DeepSpeed JSON asks for an offload device)."""
    fp32_grad_accum: bool = False
    """Accumulate gradients over micro-batches in fp32 when the weights are bf16 (DeepSpeed's
    BF16 optimizer, ZeRO-1). One process always does: its weights stay fp32 under autocast."""
    timeout_minutes: int = 30
    """Collective timeout."""

    def __post_init__(self) -> None:
        _check(
            self.backend in BACKENDS,
            "distributed.backend",
            f"must be one of {BACKENDS}, got {self.backend!r}",
        )
        _check(
            self.zero_stage in (0, 1, 2, 3),
            "distributed.zero_stage",
            f"must be 0, 1, 2 or 3, got {self.zero_stage!r}",
        )
        _check(
            self.deepspeed_config is None or Path(self.deepspeed_config).is_file(),
            "distributed.deepspeed_config",
            f"file not found: {self.deepspeed_config}",
        )
        _check(
            not self.fp32_grad_accum or self.zero_stage in (0, 1),
            "distributed.fp32_grad_accum",
            f"needs distributed.zero_stage 1 (DeepSpeed's BF16 optimizer), got {self.zero_stage}",
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


# ---------------------------------------------------------------------------------------------
# Building dataclasses from nested dicts (YAML, --set): each value checked against its field's
# type, by name, before the dataclass checks its range. Errors are ConfigErrors that name the
# field and where its value came from (file:line:column, or the --set argument).

Origins = dict[str, tuple[str, int | None, int | None]]  # "optim.lr" -> (file, line, column)


def _from_dict(cls: type, data: Any, where: str, origins: Origins | None = None) -> Any:
    origins = origins if origins is not None else {}
    if not isinstance(data, dict):
        raise _config_error(where, f"expected a mapping, got {type(data).__name__}", origins)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in data:
        if key not in names:
            name = f"{where}.{key}" if where else key
            reason = f"unknown field; known: {', '.join(sorted(names))}"
            raise _config_error(name, reason, origins, at_key=True)
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in data.items():
        name = f"{where}.{key}" if where else key
        sub = _dataclass_of(hints[key])
        if sub is not None and value is not None:
            kwargs[key] = _from_dict(sub, value, name, origins)
        else:
            kwargs[key] = _coerce(value, hints[key], name, origins)
    try:
        return cls(**kwargs)
    except TypeError as err:  # a required field missing
        raise _config_error(where or "config", str(err), origins) from err
    except ValueError as err:
        # The data room's messages name the field only: add the section.
        msg = str(err)
        if where and not msg.startswith(where):
            msg = f"{where}.{msg}"
        field_name, _, reason = msg.partition(": ")
        raise _config_error(field_name, reason or msg, origins) from err


def _config_error(name: str, reason: str, origins: Origins, at_key: bool = False) -> ConfigError:
    """A ConfigError for field ``name``, located at the value's origin (or its key's) if known."""
    if at_key and name + "@key" in origins:
        file, line, column = origins[name + "@key"]
        return ConfigError(reason, file=file, line=line, column=column, field=name)
    key = name.split("[")[0]  # a list item is located by its list
    near = [v for k, v in origins.items() if k == key or k.startswith(key + ".")]
    file, line, column = near[0] if near else (None, None, None)
    return ConfigError(reason, file=file, line=line, column=column, field=name or "config")


_EXPECTED = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


def _coerce(value: Any, hint: Any, name: str, origins: Origins) -> Any:
    """``value`` as the type ``hint`` says (YAML's ``1e-3`` string is a float), or a
    ConfigError naming the field, the value and what was expected."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1:
            return _coerce(value, inner[0], name, origins)
        return value
    if hint is Any or (value is None and hint is Any):
        return value
    if origin in (list, tuple):
        items = [value] if isinstance(value, str) and origin is list else value
        if not isinstance(items, list | tuple):
            raise _config_error(name, f"expected a list, got {value!r}", origins)
        if origin is tuple and args and args[-1] is not Ellipsis and len(items) != len(args):
            raise _config_error(name, f"expected {len(args)} values, got {value!r}", origins)
        item_hints = (
            [args[0]] * len(items)
            if args and (origin is list or args[-1] is Ellipsis)
            else list(args)
        )
        out = [
            _coerce(v, h, f"{name}[{i}]", origins) if h is not Any else v
            for i, (v, h) in enumerate(zip(items, item_hints or [Any] * len(items), strict=True))
        ]
        return out if origin is list else tuple(out)
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise _config_error(name, f"expected a mapping, got {value!r}", origins)
        return value
    if hint in _EXPECTED:
        coerced = _scalar(value, hint)
        if coerced is None:
            got = "nothing (null)" if value is None else repr(value)
            raise _config_error(name, f"expected {_EXPECTED[hint]}, got {got}", origins)
        return coerced
    return value


def _scalar(value: Any, hint: type) -> Any:
    """``value`` as a bool/int/float/str, or None when it is not one."""
    if hint is bool:
        return value if isinstance(value, bool) else None
    if isinstance(value, bool):
        return None  # true is not 1 here: a bool in a number field is a mistake
    if hint is str:
        return str(value) if isinstance(value, str | int | float) else None
    if isinstance(value, str):
        try:
            value = float(value.strip()) if hint is float else int(value.strip())
        except ValueError:
            return None
    if hint is float and isinstance(value, int | float):
        return float(value)
    if hint is int and isinstance(value, int):
        return value
    if hint is int and isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def _dataclass_of(hint: Any) -> type | None:
    """The dataclass inside a type hint (``X`` or ``X | None``), else None."""
    if dataclasses.is_dataclass(hint):
        return hint
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        for arg in typing.get_args(hint):
            if dataclasses.is_dataclass(arg):
                return arg
    return None


def _deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def parse_override(text: str) -> tuple[list[str], Any]:
    """``'optim.lr=1e-4'`` -> (["optim", "lr"], 0.0001). The value is parsed as YAML (plus
    1e-4 as a float); the field's type then decides (a float field also takes a YAML file's
    ``lr: 1e-3``, which PyYAML reads as a string)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise UsageError(f"--set {text!r}: expected section.field=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as err:
        raise UsageError(f"--set {text!r}: the value is not valid YAML ({err.problem})") from None
    if isinstance(value, str) and _SCIENTIFIC.fullmatch(value.strip()):
        value = float(value)  # YAML 1.1 wants 1.0e-4; 1e-4 is what people write
    return key.strip().split("."), value


_SCIENTIFIC = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+")


def apply_overrides(
    data: dict[str, Any], overrides: list[str], origins: Origins | None = None
) -> dict[str, Any]:
    """Apply ``section.field=value`` overrides to a nested config dict (returns a new dict)."""
    out = _deep_merge({}, data)
    for text in overrides:
        path, value = parse_override(text)
        node = out
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise UsageError(f"--set {text!r}: {part} is not a section")
        node[path[-1]] = value
        if origins is not None:
            origins[".".join(path)] = (f"--set {text}", None, None)
    return out


def preset(name: str) -> dict[str, Any]:
    """A preset as a nested dict: ``tiny`` (CPU demo) or ``paper`` (SPEC §4)."""
    if name not in PRESETS:
        raise UsageError(f"preset: unknown {name!r}; known: {sorted(PRESETS)}")
    return PRESETS[name]()


def _yaml_origins(text: str, file: str) -> Origins:
    """Where each ``section.field`` value is in a YAML text: (file, line, column), 1-based."""
    origins: Origins = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                name = f"{prefix}.{key.value}" if prefix else str(key.value)
                mark = value.start_mark
                origins[name] = (file, mark.line + 1, mark.column + 1)
                at_key = key.start_mark  # where an unknown field is pointed at
                origins[name + "@key"] = (file, at_key.line + 1, at_key.column + 1)
                walk(value, name)

    walk(yaml.compose(text), "")
    return origins


def _read_yaml(path: Path, origins: Origins) -> dict[str, Any]:
    if not path.is_file():
        state = "is a folder, not a file" if path.is_dir() else "not found"
        raise UsageError(f"config file {state}", file=path, field="--config")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        column = err.start - (raw.rfind(b"\n", 0, err.start) + 1) + 1
        raise ConfigError(f"not UTF-8 (byte {column})", file=path, line=line) from None
    try:
        data = yaml.safe_load(text) or {}
        origins.update(_yaml_origins(text, str(path)))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        reason = getattr(err, "problem", None) or str(err)
        raise ConfigError(
            f"invalid YAML: {reason}",
            file=path,
            line=mark.line + 1 if mark else None,
            column=mark.column + 1 if mark else None,
        ) from None
    if not isinstance(data, dict):
        raise ConfigError("expected a mapping (section: fields) at the top level", file=path)
    return data


def load_config(
    path: str | Path | None = None, overrides: list[str] | None = None, base: str | None = None
) -> RunConfig:
    """Build a ``RunConfig`` from a preset and/or a YAML file, then ``overrides``.

    A YAML file may name its preset with a top-level ``preset: tiny`` key; its other keys update
    that preset. ``base`` names a preset when no file is given. Raises ``ConfigError`` (a
    ``ValueError``) naming the field, the value and where it came from.
    """
    data: dict[str, Any] = {}
    origins: Origins = {}
    if path is not None:
        data = _read_yaml(Path(path), origins)
        base = data.pop("preset", base)
    if base is not None:
        data = _deep_merge(preset(base), data)
    data = apply_overrides(data, overrides or [], origins)
    if "model" not in data:
        raise ConfigError("missing section (give a preset or a model section)", field="model")
    return _from_dict(RunConfig, data, "", origins)


# ---------------------------------------------------------------------------------------------
# Presets.


def tiny_preset() -> dict[str, Any]:
    """The demo: a ~1M-parameter Llama built from config, trained for a few hundred CPU steps."""
    return {
        "model": {
            "arch": {
                "hidden_size": 64,
                "intermediate_size": 128,
                "num_layers": 2,
                "num_heads": 4,
                "num_kv_heads": 2,
                "max_position_embeddings": 1024,
                "tie_word_embeddings": False,
            },
            "tokenizer_vocab_size": 512,
            "dtype": "fp32",
        },
        "data": {"files": [], "max_len": 1024},
        "mask": {"strategies": ["block_mask"], "block_order": "tce"},
        "packing": {"max_tokens": 4096, "normalisation": "sample"},
        "optim": {"lr": 2e-3, "warmup_ratio": 0.05, "weight_decay": 0.0, "grad_clip": 1.0},
        "train": {"epochs": 4, "samples_per_step": 8, "seed": 3407, "device": "cpu"},
        "distributed": {"backend": "none", "zero_stage": 0},
        "checkpoint": {"out_dir": "runs/tiny", "save_every": 50, "keep_last": 2},
        "logging": {"log_every": 1},
    }


def paper_preset() -> dict[str, Any]:
    """SPEC §4: AdamW 5e-5, cosine, 5% warm-up, 2 epochs, 512 sequences, 4096, bf16, ZeRO-1."""
    return {
        "model": {
            "name_or_path": "deepseek-ai/deepseek-coder-6.7b-base",
            "dtype": "bf16",
            "gradient_checkpointing": True,
        },
        # Generation set once, each reflection set twice (SPEC §4): give the files with
        # --set data.files=[codefeedback.jsonl,reflectionseq-gpt.jsonl,reflectionseq-ds.jsonl].
        "data": {"files": [], "upsample": None, "max_len": 4096},
        "mask": {"strategies": ["block_mask"], "block_order": "tce", "distill": True, "kl": True},
        "packing": {"max_tokens": 16384, "normalisation": "sample"},
        "optim": {
            "lr": 5e-5,
            "schedule": "cosine",
            "warmup_ratio": 0.05,
            "weight_decay": 0.0,
            "grad_clip": 1.0,
        },
        "train": {"epochs": 2, "samples_per_step": 512, "seed": 3407, "device": "auto"},
        "distributed": {"backend": "deepspeed", "zero_stage": 1},
        "checkpoint": {"out_dir": "runs/paper", "save_every": 200, "keep_last": 2},
        "logging": {"log_every": 1},
    }


def smollm2_preset() -> dict[str, Any]:
    """SmolLM2-135M-Instruct (``reflectioncoder install-model smollm2-135m-instruct``) fine-tuned
    on a CPU: the paper's method and optimizer (block_mask ``tce``, CE + KL, AdamW 5e-5, cosine,
    5% warm-up), fp32, 8 samples per step, a few dozen steps (about a minute each on one busy
    core; bench/RESULTS.md)."""
    from reflectioncoder.install_model import default_folder

    return {
        "model": {
            "name_or_path": str(default_folder("smollm2-135m-instruct")),
            "dtype": "fp32",
            "gradient_checkpointing": False,
        },
        "data": {"files": [], "max_len": 1024},
        "mask": {"strategies": ["block_mask"], "block_order": "tce", "distill": True, "kl": True},
        "packing": {"max_tokens": 4096, "normalisation": "sample"},
        "optim": {"lr": 5e-5, "schedule": "cosine", "warmup_ratio": 0.05, "grad_clip": 1.0},
        "train": {"max_steps": 30, "samples_per_step": 8, "seed": 3407, "device": "cpu"},
        "distributed": {"backend": "none", "zero_stage": 0},
        "checkpoint": {"out_dir": "runs/smollm2", "save_every": 0, "keep_last": 1},
        "logging": {"log_every": 1},
    }


PRESETS = {"tiny": tiny_preset, "paper": paper_preset, "smollm2": smollm2_preset}
