"""The ReflectionCoder trainer: ``Trainer(cfg)``, ``.train_step()``, ``.train()``, ``.close()``.

One optimizer step, as a straight line (docs/ARCHITECTURE.md):

    plan[step] (sample indices, fixed by the seed)  ->  StepPlan (data room, host, built once:
    global denominators, mask draws, every rank's micro-batches balanced by tokens)
    -> this rank's share packed with the plan's draws
    -> forward_hidden -> reflection_loss (fused)  ->  backward  ... for each micro-batch
    -> one sync: loss parts and grad norm  ->  skip if non-finite, else clip + AdamW step

Every rank knows the whole step's samples (the plan is deterministic), so the loss weights carry
the step's global normalisation without any communication; gradients are then SUMMED over ranks.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import itertools
import logging
import math
import os
import shutil
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from reflectioncoder import progress
from reflectioncoder.config import OptimConfig, RunConfig, TrainConfig
from reflectioncoder.data.dataset import load_dataset, tokenizer_fingerprint
from reflectioncoder.data.masking import mask_rate
from reflectioncoder.data.packing import PackedBatch, StepPlan, pack_rank, plan_step
from reflectioncoder.data.tokenize import TokenizedSample
from reflectioncoder.errors import ConfigError, UserError, ctrl_c_to_main_thread, require_file
from reflectioncoder.train import (
    checkpoint,
    deepspeed_config,
    distributed,
    model_card,
    reporters,
    validation,
)
from reflectioncoder.train.engine import make_engine
from reflectioncoder.train.flops import (
    ModelShape,
    StepFlops,
    batch_flops,
    recomputed_share,
    utilisation,
)
from reflectioncoder.train.fsdp_engine import check_fsdp_run
from reflectioncoder.train.fsdp_load import build_on_meta, pending_load
from reflectioncoder.train.local_engine import wants_host_optimizer
from reflectioncoder.train.metrics import MetricsLogger, guess_peak_tflops

log = logging.getLogger("reflectioncoder.train")


@dataclasses.dataclass
class PreparedStep:
    """One step's host work: this rank's micro-batches and its host totals (tokens, samples,
    model FLOPs, hardware FLOPs: ``train.flops``, the reference recipe's tokens), added to the
    step's device sums once."""

    step: int
    batches: list[PackedBatch]
    totals: torch.Tensor


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
        epoch = f"epoch {done // n}" if ends_epoch else f"epoch {-(-done // n)} (part)"
        ratio = self.tokens / self.reference if self.reference else 0.0
        line = (
            f"{epoch}, steps {self.first}-{step}: {self.tokens} tokens computed; the reference "
            f"recipe runs {self.reference} (both passes, padded): {ratio:.2f}x"
        )
        self.first, self.tokens, self.reference = step + 1, 0, 0
        return line


class NonFiniteError(RuntimeError):
    """Too many optimizer steps in a row had a non-finite loss or gradient."""


# ---------------------------------------------------------------------------------------------
# Schedules and the step plan: pure functions of the config (so resume needs only the step).


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


# ---------------------------------------------------------------------------------------------
# The model and its loss as one module (DeepSpeed wraps this; under ZeRO-3 the LM head is
# registered as an external parameter of it, since the fused loss reads it outside lm_head).


class ReflectionLossModule(nn.Module):
    """model + fused reflection loss: ``forward(batch) -> (loss, ce, kl, teacher_ce)``."""

    def __init__(self, model: nn.Module, autocast_dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.model = model
        self.autocast_dtype = autocast_dtype
        # fp16's loss scale (0-dim, on the device), set by the engine (``train.engine.LossScale``)
        self.loss_scale: torch.Tensor | None = None

    def forward(
        self, batch: PackedBatch, split: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Weighted loss sums of one packed micro-batch (0-dim tensors, no host sync).

        ``split``: also returns the teacher's CE part (one extra no-grad loss pass over the
        teacher's CE rows, ``batch.teacher_ce_rows``, on logging steps only); else teacher_ce
        is NaN.
        """
        from reflectioncoder.loss import reflection_loss
        from reflectioncoder.model import forward_hidden, lm_head_weight

        device_type = batch.input_ids.device.type
        with torch.autocast(
            device_type,
            dtype=self.autocast_dtype or torch.float32,
            enabled=bool(self.autocast_dtype),
        ):
            hidden = forward_hidden(self.model, batch)
        weight = lm_head_weight(self.model)
        if self.autocast_dtype is not None:
            hidden = hidden.to(self.autocast_dtype)
            weight = weight.to(self.autocast_dtype)
        # The packing's indices are right by construction: no checks (each a host sync).
        loss, parts = reflection_loss(hidden, self._scaled(batch), weight, check_inputs=False)
        if self.loss_scale is not None and torch.is_grad_enabled():
            # the scaled sums back to the loss (exact: a power of two); the backward's d z keep it
            loss = loss / self.loss_scale
            parts = {k: v / self.loss_scale for k, v in parts.items()}
        teacher_ce = torch.full((), float("nan"), device=loss.device)
        if split:
            with torch.no_grad():
                only_teacher = dataclasses.replace(
                    batch,
                    ce_weight=batch.ce_weight * ~batch.row_is_student,
                    kl_pairs=batch.kl_pairs[:0],
                    kl_weight=batch.kl_weight[:0],
                    ce_only_rows=batch.teacher_ce_rows,
                )
                # the loss alone: no d z, no gradient GEMMs or buffers (a forward's cost)
                teacher_ce = reflection_loss(
                    hidden, only_teacher, weight, check_inputs=False, need_grad=False
                )[1]["ce"]
        return loss, parts["ce"].detach(), parts["kl"].detach(), teacher_ce.detach()

    def _scaled(self, batch: PackedBatch) -> PackedBatch:
        """``batch`` with its loss weights times the fp16 loss scale when a gradient is wanted:
        the fused loss writes its d z (upstream gradient 1) in the forward, in fp16, where they
        would flush to zero at a real step's weights; the engine's backward then multiplies the
        returned (unscaled) loss by the scale, so the d z arrive with an upstream gradient of 1."""
        if self.loss_scale is None or not torch.is_grad_enabled():
            return batch
        return dataclasses.replace(
            batch,
            ce_weight=batch.ce_weight * self.loss_scale,
            kl_weight=batch.kl_weight * self.loss_scale,
        )


# ---------------------------------------------------------------------------------------------
# Data and model set-up (the data and model rooms do the work; this wires them to the config).


def load_samples(
    cfg: RunConfig, tokenizer: Any, is_main: bool = True
) -> tuple[list[TokenizedSample], dict[str, int]]:
    """Load, validate and tokenise ``cfg.data.files`` (upsampled, cached; the data room's
    ``load_dataset``); over-length samples are dropped and counted. Each sample's ``uid`` is
    distinct (upsampled copies too), so mask draws depend on (seed, step, uid) only."""
    samples, report = load_dataset(cfg.data, tokenizer, warn=is_main)
    if is_main and not (report.skipped or report.over_length):  # else load_dataset warned
        log.info("data: %s", report.summary(cfg.data.max_len))
    return samples, {
        "loaded": report.loaded,
        "samples": report.samples,
        "skipped_bad": len(report.skipped),
        "dropped_too_long": len(report.over_length),
    }


def _check_paths(cfg: RunConfig) -> None:
    """The model folders, then every data file: a folder or a typo is named in one line before
    a tokenizer is trained, data is read or weights are loaded."""
    from reflectioncoder.model import resolve_model_path

    if cfg.model.name_or_path is not None:
        resolve_model_path(cfg.model.name_or_path, "model.name_or_path")
    if cfg.model.tokenizer is not None:
        resolve_model_path(cfg.model.tokenizer, "model.tokenizer", need="tokenizer")
    for field in ("data.files", "data.validation_files"):
        for path in getattr(cfg.data, field.split(".")[1]):
            require_file(path, "data file", field=field)


def _texts_for_tokenizer(cfg: RunConfig) -> list[str]:
    from reflectioncoder.data.schema import load_files

    raw, _ = load_files(cfg.data.files, None, cfg.data.skip_bad)
    texts = [b.content for s in raw for m in s.messages for b in m.blocks]
    if not any(texts):
        raise UserError("no text to train a tokenizer on", field="data.files")
    return texts


def load_tokenizer(cfg: RunConfig, info: distributed.DistInfo, resume_from: Path | None) -> Any:
    """The run's ORIGINAL tokenizer (before the special tokens), in memory: nothing is written.

    Resuming from a checkpoint: OUT/tokenizer, which must be the one that checkpoint trained
    with. Otherwise ``model.tokenizer`` or ``model.name_or_path``; else one trained on the data
    by rank 0 and sent to the other ranks, so every rank holds the same vocabulary.
    """
    from transformers import AutoTokenizer

    if resume_from is not None:
        return _resumed_tokenizer(Path(cfg.checkpoint.out_dir), resume_from)
    source = cfg.model.tokenizer or cfg.model.name_or_path
    if source is not None:
        from reflectioncoder.model import resolve_model_path

        field = "model.tokenizer" if cfg.model.tokenizer else "model.name_or_path"
        folder = resolve_model_path(source, field, need="tokenizer")
        return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    from reflectioncoder.tokenizer import tokenizer_from_json, train_tokenizer

    serialised = None
    if info.is_main:
        trained = train_tokenizer(_texts_for_tokenizer(cfg), cfg.model.tokenizer_vocab_size)
        serialised = trained.backend_tokenizer.to_str()
    return tokenizer_from_json(distributed.broadcast_object(serialised))


def _resumed_tokenizer(out_dir: Path, checkpoint_path: Path) -> Any:
    """OUT/tokenizer, checked against the fingerprint the checkpoint recorded."""
    from transformers import AutoTokenizer

    saved = out_dir / "tokenizer"
    if not (saved / "tokenizer_config.json").is_file():
        raise UserError(
            f"{checkpoint_path} has no tokenizer beside it", file=saved, field="--resume"
        )
    tokenizer = AutoTokenizer.from_pretrained(str(saved), local_files_only=True)
    state = checkpoint.read_trainer_state(checkpoint_path)
    recorded = state.get("tokenizer_sha256")
    if recorded is not None and recorded != tokenizer_fingerprint(tokenizer):
        raise UserError(
            f"is not the tokenizer {checkpoint_path} was trained with", file=saved, field="--resume"
        )
    return tokenizer


def _check_tokenizer_fits(cfg: RunConfig, tokenizer: Any, path: Path) -> None:
    """A tokenizer whose own vocabulary runs past the model's embedding rows is another model's:
    refused from the model's config.json, before the weights load."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(path), local_files_only=True)
    rows = getattr(config.get_text_config(), "vocab_size", None)  # a composite's: its text model's
    if isinstance(rows, int) and tokenizer.vocab_size > rows:
        field = "model.tokenizer" if cfg.model.tokenizer else "model.name_or_path"
        own = "leave model.tokenizer unset to use the model's own"
        advice = (
            own if cfg.model.tokenizer else "set model.tokenizer to the one it was trained with"
        )
        raise UserError(
            f"{tokenizer.vocab_size} tokens, but the model {path} has {rows} embedding rows: "
            f"not this model's tokenizer ({advice})",
            file=tokenizer.name_or_path or None,
            field=field,
        )


def build_model(
    cfg: RunConfig, tokenizer: Any, dtype: torch.dtype, info: distributed.DistInfo
) -> nn.Module:
    """Load or build the model, add the special tokens (mean-initialised rows).

    ``tokenizer`` is the original one: the seven tokens are added to it here (in place). Under
    DeepSpeed the weights load in the training dtype. Under ZeRO-3 a model with safetensors
    weights is built partitioned and each rank reads only its piece of every parameter, the
    special-token rows included: nothing is ever whole on a rank. Other checkpoints go through
    transformers' DeepSpeed integration (``Trainer`` keeps it alive), which gathers one module at
    a time, and the special-token rows are written under gathered parameters. Under FSDP such a
    model is built on the meta device and each rank reads its shards once the engine has
    sharded it (``train/fsdp_load.py``); other checkpoints load whole on every rank.
    """
    from reflectioncoder.data.tokenize import add_special_tokens
    from reflectioncoder.model import (
        add_special_token_embeddings,
        build_tiny_llama,
        load_model,
        resolve_model_path,
    )
    from reflectioncoder.zero3_load import has_safetensors, load_model_into_partitions

    # DeepSpeed and FSDP load in the training dtype (they keep fp32 masters); one process loads
    # fp32 and casts later (bf16 weights with fp32 masters in the engine, or fp32 weights under
    # autocast).
    sharded = info.deepspeed or cfg.distributed.backend == "fsdp"
    load_dtype = dtype if sharded else torch.float32
    path = None if cfg.model.name_or_path is None else resolve_model_path(cfg.model.name_or_path)
    if path is not None:
        _check_tokenizer_fits(cfg, tokenizer, path)
    if path is not None and deepspeed_config.uses_zero3(cfg, info) and has_safetensors(path):
        model, _ = load_model_into_partitions(
            path,
            tokenizer,
            add_special_tokens(tokenizer),
            dtype=load_dtype,
            partition_context=deepspeed_config.zero3_partitioning(cfg, info),
            local_piece=deepspeed_config.zero3_local_piece,
        )
        return model
    if path is not None and cfg.distributed.backend == "fsdp":
        if has_safetensors(path):  # values read by each rank once sharded (FSDPEngine)
            return build_on_meta(path, tokenizer, add_special_tokens(tokenizer), load_dtype)
        if info.is_main:
            log.info(
                "FSDP: %s has no safetensors weights: each rank loads the whole model before "
                "sharding it (save it with save_pretrained to load only each rank's shards)",
                path,
            )
    if path is not None:
        model = load_model(path, dtype=load_dtype)
    else:
        model = build_tiny_llama(len(tokenizer), seed=cfg.train.seed, **cfg.model.arch)
    splits = add_special_tokens(tokenizer)
    add_special_token_embeddings(
        model, tokenizer, splits, gather_for_update=distributed.gathered_params
    )
    return model


def _config_changes(saved: Path, cfg: RunConfig) -> list[str]:
    """``section.field old -> new`` for each value ``cfg`` changes from the run's saved config."""
    import yaml

    def flat(tree: Any, prefix: str = "") -> dict[str, Any]:
        if not isinstance(tree, dict):
            return {prefix: tree}
        return {k: v for key, sub in tree.items() for k, v in flat(sub, f"{prefix}{key}.").items()}

    try:
        old = flat(yaml.safe_load(saved.read_text()))
    except (OSError, yaml.YAMLError):
        return []
    new = flat(cfg.to_dict())
    return [f"{k[:-1]} {old.get(k)!r} -> {v!r}" for k, v in new.items() if old.get(k, v) != v]


def _entries(folder: Path) -> set[str] | None:
    """The names in ``folder`` (None when it does not exist)."""
    return set(os.listdir(folder)) if folder.is_dir() else None


# What a start writes into OUT before its first step (the trackers' folders included).
_START_FILES = frozenset(
    {"config.yaml", "tokenizer", "metrics.jsonl", "tensorboard", "wandb", "mlruns"}
    | {reporters.RUN_IDS, checkpoint.LOCK_FILE}
)


def _remove_added(folder: Path, before: set[str] | None) -> None:
    """Remove what a failed fresh start added to ``folder`` (``before``: ``_entries`` then):
    only the run's own names, never another's file that appeared meanwhile; the folder itself
    when the launch made it and nothing else is left."""
    for name in (set(_entries(folder) or ()) - set(before or ())) & _START_FILES:
        path = folder / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)  # OUT/.lock too, while this launch still holds it
    if before is None and folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()


def _note_restart(out_dir: Path) -> None:
    """Say so when a fresh launch starts again a run that stopped before its first step."""
    if (out_dir / "config.yaml").is_file():  # and no run_markers: check_run_folder passed
        log.warning(
            "%s: its run stopped before its first step (no checkpoint, no metrics row): "
            "starting it again (config.yaml and tokenizer/ are rewritten)",
            out_dir,
        )


def _not_a_checkpoint(path: Path) -> str:
    """Why ``--resume PATH`` cannot continue from ``path``, and what would."""
    if not path.exists():
        return "not found"
    if (path.parent / checkpoint.COMPLETE).is_file():
        return f"a folder inside the checkpoint {path.parent}: give that"
    newest = checkpoint.latest_checkpoint(path)
    if newest is not None:
        return f"this is a run folder; its newest complete checkpoint is {newest}"
    if path.name.startswith(checkpoint.TMP_PREFIX):
        return "its save was interrupted: not a complete checkpoint"
    if (path / "config.json").is_file():
        return (
            "a model, not a checkpoint (no optimizer state); to train it further, start a run "
            f"with model.name_or_path={path}"
        )
    return "not a complete checkpoint folder (reflectioncoder runs RUN_FOLDER lists them)"


# ---------------------------------------------------------------------------------------------


class Trainer:
    """Trains one run. ``Trainer(cfg)`` sets everything up (resuming if asked)."""

    @distributed.shut_down_if_failed
    def __init__(self, cfg: RunConfig, resume: bool | str = False, overwrite: bool = False) -> None:
        # The DeepSpeed JSON's optimizer section, honoured (or refused) before anything starts.
        optim = deepspeed_config.optim_with_deepspeed_section(cfg)
        if optim is not cfg.optim:
            cfg = dataclasses.replace(cfg, optim=optim)
        self.cfg = cfg
        self.out_dir = Path(cfg.checkpoint.out_dir)
        # Before anything is written: a fresh launch never replaces a run by mistake.
        checkpoint.check_run_folder(self.out_dir, bool(resume), overwrite)
        reporters.check_installed(cfg.logging.trackers)  # at start-up, not after a step
        self.overwrite = overwrite and not resume
        self.resumed = bool(resume)
        self.info = distributed.setup(cfg.distributed, cfg.train.device)
        if self.info.is_main and not (resume or overwrite):  # check_run_folder let it start
            _note_restart(self.out_dir)
        self._lock = None  # OUT/.lock: taken now if a run made it, else when OUT is written
        if self.info.is_main and (self.out_dir / checkpoint.LOCK_FILE).is_file():
            self._lock = checkpoint.lock_run_folder(self.out_dir, announce=False)
        if not self.info.deepspeed:  # offload_optimizer true on several ranks: before the model
            wants_host_optimizer(cfg, self.info)
        check_fsdp_run(cfg, self.info.device)
        if cfg.model.fused_projections and deepspeed_config.uses_zero3(cfg, self.info):
            raise ConfigError(
                "not with ZeRO-3 (its hooks gather each projection's own weights): set it false "
                "or use ZeRO stage 0-2",
                field="model.fused_projections",
            )
        if cfg.model.attention != "auto":  # a named kernel that cannot run: before any work
            from reflectioncoder.kernels.varlen_attention import unavailable_reason

            why = unavailable_reason(cfg.model.attention, self.info.device)
            if why is not None:
                raise ConfigError(f"{cfg.model.attention!r} does not run here: {why}",
                                  field="model.attention")  # fmt: skip
        if not cfg.logging.progress or not self.info.is_main:
            progress.quiet()
        local_ranks = int(os.environ.get("LOCAL_WORLD_SIZE", 1))
        self.threads = distributed.set_threads(cfg.train.threads, local_ranks)
        torch.manual_seed(cfg.train.seed)
        np.random.seed(cfg.train.seed % 2**32)

        self.dtype = distributed.resolve_dtype(cfg.model.dtype, self.info.device)
        # Everything is loaded before anything is written: a start that fails on the data, the
        # tokenizer or the model leaves the run folder as it was.
        if not cfg.data.files:  # the presets name none: the first thing a new user meets
            raise ConfigError(
                "no training files given, e.g. --set data.files=[data/reflection.jsonl]",
                field="data.files",
            )
        if cfg.train.eval_every and not (cfg.data.validation_files or cfg.data.validation_fraction):
            raise ConfigError(
                "no held-out data to evaluate: set data.validation_files or "
                "data.validation_fraction",
                field="train.eval_every",
            )
        self.resume_from = self._checkpoint_to_resume(resume)
        _check_paths(cfg)
        self.manifests = model_card.read_manifests(cfg.data.files)  # the card's, checked now
        self.tokenizer = load_tokenizer(cfg, self.info, self.resume_from)
        original_tokenizer = copy.deepcopy(self.tokenizer)  # build_model adds the special tokens
        # Alive as long as the model: transformers' ZeRO-3 integration (None without ZeRO-3).
        self._zero3_hf = deepspeed_config.zero3_transformers_config(cfg, self.info)
        model = build_model(cfg, self.tokenizer, self.dtype, self.info)
        from reflectioncoder.model_support import check_supported

        # before the run folder is written (prepare_model checks again, without the lengths)
        check_supported(model, max_len=max(cfg.data.max_len, 1))
        if self.resume_from is not None:
            checkpoint.check_same_model(self.resume_from, model.config)
        self._load_data_and_plan(cfg)
        self.tokenizer_sha256 = tokenizer_fingerprint(original_tokenizer)
        self._lock_made = False  # whether this launch made OUT/.lock (_write_run_folder)
        # What OUT held before this launch wrote to it (None: no folder): a fresh start that
        # fails (a tracker that cannot start, the engine) removes what it added, so the same
        # command can run again instead of finding "a run" of an empty metrics.jsonl there.
        fresh = self.info.is_main and self.resume_from is None and not self.overwrite
        before = _entries(self.out_dir) if fresh else set()
        if self.info.is_main:
            self._write_run_folder(original_tokenizer)
        try:
            self._start(cfg, model)
        except BaseException:  # a failed start leaves the folder as it was: no lock file made
            if fresh:
                _remove_added(self.out_dir, before)
            if self._lock is not None:
                checkpoint.release_lock(self._lock, self._lock_made)
            raise

    def _start(self, cfg: RunConfig, model: nn.Module) -> None:
        """The model placed and wrapped in its engine, ``--resume``'s checkpoint loaded, the
        metrics opened: the start, once the run folder is written (or, resuming, locked)."""
        distributed.barrier()

        from reflectioncoder.model import count_parameters, lm_head_weight, prepare_model

        autocast = self._place_weights(model)
        prepare_model(
            model,
            fused_projections=cfg.model.fused_projections,
            attention=cfg.model.attention,
            device=self.info.device,
        )
        cfg = self._plan_memory(cfg, model)
        compile_ = cfg.model.compile
        if compile_ is True or (compile_ == "auto" and self.info.device.type == "cuda"):
            from reflectioncoder.model import compile_layers

            compile_layers(model)
        self.model = model
        self.n_params = count_parameters(model)
        self.flop_shape = ModelShape.from_model(model)
        self.module = ReflectionLossModule(model, autocast)
        self.engine = make_engine(
            self.module, cfg, self.info, external_params=[lm_head_weight(model)]
        )

        # The next step's host work runs here while the current step computes.
        self._host = ThreadPoolExecutor(1, "rc-prepare", initializer=ctrl_c_to_main_thread)
        self._ahead: Future[PreparedStep] | None = None
        self.step = 0
        self.skipped = 0
        self._skipped_in_a_row = 0
        self._changed_on_resume: list[str] = []  # config fields a --resume changed (rank 0)
        resumed_totals = self._resume_state()
        peak = cfg.logging.peak_tflops
        if peak is None and self.info.device.type == "cuda":
            peak = guess_peak_tflops(torch.cuda.get_device_name(self.info.device))
        self.peak_flops = peak * 1e12 if peak else None
        self.metrics = MetricsLogger(
            self.out_dir,
            cfg.logging,
            self.total_steps,
            self.step,
            enabled=self.info.is_main,
            run_config=cfg.to_dict(),
            start_totals=resumed_totals,
            new_tracker_runs=reporters.changes_values(self._changed_on_resume),
        )
        if self.info.is_main:
            self._log_start(cfg)

    def _load_data_and_plan(self, cfg: RunConfig) -> None:
        """The samples, and the sample ids of every optimizer step; a resumed run must plan
        the steps its checkpoint planned."""
        # Rank 0 tokenises (and fills data.cache_dir) first; the others then read the cache.
        if self.info.is_main:
            self.samples, self.data_counts = load_samples(cfg, self.tokenizer, True)
            self.samples, self.validation = self._split_validation(cfg, True)
        distributed.barrier()
        if not self.info.is_main:
            self.samples, self.data_counts = load_samples(cfg, self.tokenizer, False)
            self.samples, self.validation = self._split_validation(cfg, False)
        self.plan = plan_steps([len(s) for s in self.samples], cfg.train)  # sample ids per step
        self.total_steps = len(self.plan)
        self.plan_sha256 = plan_fingerprint(self.samples, self.plan)
        # What data.validation_fraction took out of the training data (None: nothing).
        fraction = cfg.data.validation_fraction
        self.held_out_sha256 = (
            validation.held_out_fingerprint(self.validation) if fraction else None
        )
        if self.resume_from is not None:
            state = checkpoint.read_trainer_state(self.resume_from)
            planned = state.get("total_steps")
            if planned != self.total_steps:
                raise UserError(
                    f"{self.resume_from} planned {planned} steps, this config plans "
                    f"{self.total_steps} (data, batch size, epochs or max_steps changed"
                    f"{self._plan_changes()})",
                    field="--resume",
                )
            self._check_held_out(state)
            self._check_plan(state)

    def _check_plan(self, state: dict[str, Any]) -> None:
        """A resumed run trains the steps its checkpoint's run planned (checkpoints from before
        the record: not checked)."""
        recorded = state.get("plan_sha256", self.plan_sha256)
        if recorded != self.plan_sha256:
            raise UserError(
                f"{self.resume_from} planned its steps on other samples or in another order "
                f"(data.files or their contents, train.seed or the data options changed"
                f"{self._plan_changes()}): resume with the run's own config and data, or start a "
                "new run",
                field="data.files",
            )

    def _plan_changes(self) -> str:
        """What this config changes from the run's in the sections that plan its steps."""
        changed = _config_changes(self.out_dir / "config.yaml", self.cfg)
        planning = [c for c in changed if c.startswith(("data.", "train.", "packing."))]
        return f"; changed from the run's: {'; '.join(planning)}" if planning else ""

    def _check_held_out(self, state: dict[str, Any]) -> None:
        """A resumed run holding out samples holds out what its checkpoint's run held out: other
        ones may have been trained on by the steps done (checkpoints from before the record:
        not checked)."""
        recorded = state.get("held_out_sha256", self.held_out_sha256)
        if self.held_out_sha256 is not None and recorded != self.held_out_sha256:
            before = "held out other samples" if recorded else "held out none"
            raise UserError(
                f"{self.resume_from} {before}: its steps may have trained on samples this "
                "config holds out (data.validation_fraction, train.seed or data.files changed)",
                field="data.validation_fraction",
            )

    def _split_validation(
        self, cfg: RunConfig, is_main: bool
    ) -> tuple[list[TokenizedSample], list[TokenizedSample]]:
        """(training samples, held-out samples): ``data.validation_fraction`` of the loaded
        samples, or ``data.validation_files``, or none; counted in ``data_counts``."""
        held: list[TokenizedSample] = []
        if cfg.data.validation_fraction:
            fraction, seed = cfg.data.validation_fraction, cfg.train.seed
            samples, held = validation.hold_out(self.samples, fraction, seed)
            self.data_counts["samples"] = len(samples)
            if is_main:
                log.info(
                    "validation: %d of %d samples held out (data.validation_fraction), never "
                    "trained on",
                    len(held),
                    len(self.samples),
                )
        elif cfg.data.validation_files:
            samples = self.samples
            held = validation.load_validation_files(cfg, self.tokenizer, is_main)
        else:
            samples = self.samples
        if held:
            self.data_counts["validation"] = len(held)
        if held and is_main and (n := validation.also_trained(samples, held)):
            log.warning(
                "validation: %d of %d held-out samples are also in the training data (the same "
                "tokens): their loss is not a held-out one",
                n,
                len(held),
            )
        return samples, held

    def _place_weights(self, model: nn.Module) -> torch.dtype | None:
        """Put the weights on the device in the dtype the engine wants; the dtype the loss
        module computes under autocast (None: none)."""
        from reflectioncoder.model import cast_weights, count_parameters

        if self._zero3_hf is not None:  # loaded into partitions: never whole on one device
            if self.info.is_main:
                local = sum(p.ds_tensor.numel() for p in model.parameters())
                log.info(
                    "ZeRO-3: model loaded into partitions, this rank holds %d of %d parameters",
                    local,
                    count_parameters(model),
                )
            return None
        if pending_load(model) is not None:
            # built on meta: the engine reads each rank's shards (fp32 masters)
            if self.info.is_main:
                log.info(
                    "FSDP: model built on the meta device; each rank reads only its shards of "
                    "%s once sharded",
                    pending_load(model).folder,
                )
            return None
        if self._casts_weights():
            cast_weights(model, self.info.device, self.dtype)  # the engine keeps fp32 masters
            return None
        model.to(self.info.device)  # fp32 weights; bf16 / fp16 through autocast
        return self.dtype if self.dtype != torch.float32 else None

    def _casts_weights(self) -> bool:
        """Whether the weights are cast to the training dtype (the engine keeping fp32 masters);
        else they stay fp32 and a 16-bit dtype runs under autocast (fp16 in one process too)."""
        cfg = self.cfg
        return (
            self.info.deepspeed
            or cfg.distributed.backend == "fsdp"
            or (self.dtype == torch.bfloat16 and cfg.model.mixed_precision == "masters")
        )

    def _resume_state(self) -> dict[str, Any] | None:
        """Load ``--resume``'s checkpoint into the engine and set the step and skip counts;
        the metrics' running totals it saved (None on a fresh start)."""
        if self.resume_from is None:
            return None
        state = checkpoint.load_checkpoint(self.resume_from, self.engine, self.info)
        self.step, self.skipped = int(state["step"]), int(state.get("skipped", 0))
        if self.info.is_main:  # a resume refused in its checks left the lock file as it was
            checkpoint.announce_holder(self._lock)
            changed = _config_changes(self.out_dir / "config.yaml", self.cfg)
            self._changed_on_resume = [c.split(" ", 1)[0] for c in changed]
            self.cfg.save(self.out_dir / "config.yaml")
            log.info("resumed from %s at step %d", self.resume_from, self.step)
            if changed:  # config.yaml now says the new values: the log keeps the old ones
                log.info("--resume: config changed from the run's: %s", "; ".join(changed))
            others = [t for t in self.cfg.logging.trackers if t != "tensorboard"]
            if others and reporters.changes_values(self._changed_on_resume):
                log.info(
                    "--resume: new %s run(s), as the change gives other values than those "
                    "already sent after step %d (steps 1-%d copied from metrics.jsonl)",
                    ", ".join(others), self.step, self.step,
                )  # fmt: skip
        return state.get("totals")

    def _log_start(self, cfg: RunConfig) -> None:
        """What the run is about to do (rank 0), and a warning for ZeRO-3 in one process."""
        log.info(
            "%d samples, %d optimizer steps, %d parameters, %d rank(s), %s, %s, "
            "%d CPU thread(s) per rank",
            len(self.samples),
            self.total_steps,
            self.n_params,
            self.info.world_size,
            self.engine.describe(),
            self.dtype,
            self.threads,
        )
        one_zero3 = self.info.world_size == 1 and deepspeed_config.uses_zero3(cfg, self.info)
        if one_zero3 and not self.engine.offloads_optimizer:
            # Measured on an H200 (bench/RESULTS.md): 2.4x the step time, nothing saved.
            log.warning(
                "ZeRO-3 in one process partitions nothing and gathers every layer for "
                "nothing: on one GPU use distributed.zero_stage=0-2 or "
                "distributed.backend=none, or offload_optimizer=true to fit a larger model"
            )

    def _plan_memory(self, cfg: RunConfig, model: nn.Module) -> RunConfig:
        """Give each layer its checkpointing policy and decide the optimizer's offload, once,
        from the GPU's memory (``activation_checkpointing.plan_run``); the config with the
        offload decided."""
        from reflectioncoder.activation_checkpointing import LAYER_POLICIES, apply_plan, plan_run
        from reflectioncoder.model import count_parameters

        device = self.info.device
        stage = deepspeed_config.zero_stage_of(cfg) if self.info.deepspeed else 0  # noqa: SLF001
        fsdp = cfg.distributed.backend == "fsdp"
        if fsdp:
            stage = 3  # sharded as ZeRO-3 (resident_bytes counts FSDP's own bytes)
        # fp16 in one process keeps fp32 weights under autocast, whatever mixed_precision says
        half = self.dtype in (torch.bfloat16, torch.float16) and self._casts_weights()
        shape = ModelShape.from_model(model)  # its widths size the planner's bytes and costs
        offload_layers = self._offloadable_layers(cfg, model, shape, 2 if half else 4)
        offload = cfg.distributed.offload_optimizer
        if self.info.deepspeed and stage == 0 and offload == "auto":
            offload = False  # no ZeRO-Offload at DeepSpeed's ZeRO-0 (can_offload: one process)
        memory = plan_run(
            cfg.model.checkpointing_policy,
            cfg.model.gradient_checkpointing,
            layers=len(model.base_model.layers),
            tokens=cfg.packing.max_tokens,
            shape=shape,
            params=count_parameters(model),
            stage=stage,
            ranks=self.info.world_size,
            offload=offload,
            fsdp=fsdp,
            device_bytes=(
                torch.cuda.get_device_properties(device).total_memory
                if device.type == "cuda"
                else None
            ),
            element_bytes=2 if half else 4,
            offload_layers=offload_layers,
        )
        apply_plan(model, memory.layers)
        if self.info.is_main and cfg.model.gradient_checkpointing:
            counts = {p: memory.layers.count(p) for p in LAYER_POLICIES}
            log.info(
                "activation checkpointing %s: %s of %d layers%s",
                cfg.model.checkpointing_policy,
                ", ".join(f"{p} {n}" for p, n in counts.items() if n),
                len(memory.layers),
                ", optimizer offloaded to CPU" if memory.offload else "",
            )
        if self.info.is_main and not memory.fits:
            log.warning(
                "GPU memory: the activations need %.1f GiB, %.1f GiB is left beside the "
                "weights, gradients and optimizer states: expect out-of-memory; use "
                "distributed.offload_optimizer (one rank, or DeepSpeed ZeRO-1/2), more GPUs or "
                "ZeRO-3, or a smaller packing.max_tokens",
                memory.activation_bytes / 2**30,
                max(memory.budget_bytes, 0) / 2**30,
            )
        distributed_cfg = dataclasses.replace(cfg.distributed, offload_optimizer=memory.offload)
        return dataclasses.replace(cfg, distributed=distributed_cfg)

    def _offloadable_layers(
        self, cfg: RunConfig, model: nn.Module, shape: ModelShape, element_bytes: int
    ) -> tuple[int, int]:
        """How many layers ``auto`` may offload on this GPU, every how many (``offload_rule``, with
        the GPU's peak from ``logging.peak_tflops`` or the card's name, the host link shared by
        the ranks on this host: ``link_bytes_s``); 0 on a CPU, with
        ``model.activation_offload`` off, or for a card of unknown peak."""
        from reflectioncoder import activation_checkpointing as ac

        device = self.info.device
        if device.type != "cuda" or not cfg.model.activation_offload:
            return (0, 1)
        peak = cfg.logging.peak_tflops or guess_peak_tflops(torch.cuda.get_device_name(device))
        if not peak:
            log.info("activation offload off: the GPU's peak is unknown (logging.peak_tflops)")
            return (0, 1)
        layers = model.base_model.layers
        layer_params = sum(getattr(p, "ds_numel", p.numel()) for p in layers[0].parameters())
        tokens = cfg.packing.max_tokens
        forward_s = ac.layer_forward_s(layer_params, tokens, peak * 1e12)
        on_host = int(os.environ.get("LOCAL_WORLD_SIZE", self.info.world_size))
        return ac.offload_rule(
            len(layers), tokens, shape, forward_s, ac.link_bytes_s(on_host), element_bytes
        )

    def _checkpoint_to_resume(self, resume: bool | str) -> Path | None:
        """The checkpoint ``--resume`` continues from (None: a fresh start)."""
        if not resume:
            return None
        if isinstance(resume, str):
            path = Path(resume)
            if not (path / checkpoint.COMPLETE).is_file():
                raise UserError(_not_a_checkpoint(path), file=path, field="--resume")
            run = path.parent.parent  # OUT/checkpoints/step-N: its tokenizer and metrics are there
            if run.resolve() != self.out_dir.resolve():
                raise UserError(
                    f"a checkpoint of the run {run}, not of checkpoint.out_dir {self.out_dir}: "
                    f"set checkpoint.out_dir={run} (a copy of that folder resumes too)",
                    file=path,
                    field="--resume",
                )
            return path
        path = checkpoint.latest_checkpoint(self.out_dir)
        if path is None and checkpoint.list_checkpoints(self.out_dir):
            raise UserError(
                "holds model-only checkpoints (checkpoint.model_only): none has the optimizer "
                "state to continue from",
                file=self.out_dir,
                field="--resume",
            )
        if path is None and (self.out_dir / "final" / "config.json").is_file():
            raise UserError(
                "holds a finished run's final model and no checkpoint to resume from "
                "(checkpoint.save_every: 0): nothing to continue; --overwrite trains it again",
                file=self.out_dir,
                field="--resume",
            )
        if path is None and self.info.is_main:
            log.warning("--resume: no checkpoint in %s; starting from step 0", self.out_dir)
        elif self.info.is_main:
            log.info("--resume: the newest complete checkpoint is %s", path)
        return path

    def _write_run_folder(self, original_tokenizer: Any) -> None:
        """OUT/config.yaml and OUT/tokenizer (the original one), once everything has loaded."""
        if self._lock is None:
            self._lock_made = not (self.out_dir / checkpoint.LOCK_FILE).exists()
            self._lock = checkpoint.lock_run_folder(self.out_dir, announce=False)
            # a launch that began with this one may have written its run meanwhile
            checkpoint.check_run_folder(self.out_dir, self.resumed, self.overwrite)
        if self.resume_from is None:  # a resumed run's once its checkpoint loaded (_resume_state)
            checkpoint.announce_holder(self._lock)  # held since the start, unchanged until now
        if self.overwrite:
            checkpoint.clear_run_folder(self.out_dir)
        if self.resume_from is None:  # a resumed run's, once its checkpoint has loaded
            self.cfg.save(self.out_dir / "config.yaml")
            saved = self.out_dir / "tokenizer"
            shutil.rmtree(saved, ignore_errors=True)
            original_tokenizer.save_pretrained(str(saved))

    # -- one optimizer step -------------------------------------------------------------------

    def step_plan(self, step: int) -> StepPlan:
        """Step ``step``'s plan: its samples, global denominators, mask draws and every rank's
        micro-batches (built once; every rank builds the same, so no communication)."""
        cfg = self.cfg
        return plan_step(
            [self.samples[i] for i in self.plan[step]],
            step,
            self.total_steps,
            cfg.mask,
            cfg.packing,
            cfg.train.seed,
            self.info.world_size,
        )

    def step_batches(self, step: int) -> list[PackedBatch]:
        """This rank's micro-batches of ``step`` (mask applied at ``step``). Every rank runs
        the same number of micro-batches."""
        return pack_rank(self.step_plan(step), self.info.rank, self.cfg.mask, self.cfg.packing)

    def _splits_ce(self, step: int) -> bool:
        """Whether step ``step`` logs the teacher's and the student's CE apart (an extra
        no-grad loss pass over the teacher's CE rows)."""
        return self.cfg.logging.split_ce and (step + 1) % self.cfg.logging.log_every == 0

    def _prepare(self, step: int) -> PreparedStep:
        """Step ``step``'s host work: plan, mask, pack, the host totals, and on CUDA pinned
        copies (so the copies to the device can overlap)."""
        batches = self.step_batches(step)
        recompute = recomputed_share(self.model.rc_checkpointing_plan)
        split = self._splits_ce(step)
        flops = sum(
            (batch_flops(self.flop_shape, b, recompute, split) for b in batches), StepFlops()
        )
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
        if self.info.device.type == "cuda":
            batches = [b.pin_memory() for b in batches]
            totals = totals.pin_memory()
        return PreparedStep(step, batches, totals)

    def _prepared(self, step: int) -> tuple[PreparedStep, float]:
        """Step ``step``'s host work, prepared on the background thread while the previous
        step ran (or now, on the first step); then the next step's is started. Also returns
        the seconds this step waited for it (host time left on the critical path)."""
        t0 = time.perf_counter()
        ahead, self._ahead = self._ahead, None
        prepared = ahead.result() if ahead is not None else None
        if prepared is None or prepared.step != step:
            prepared = self._prepare(step)
        waited = time.perf_counter() - t0
        if step + 1 < self.total_steps:
            self._ahead = self._host.submit(self._prepare, step + 1)
        return prepared, waited

    def train_step(self) -> dict[str, Any]:
        """Run optimizer step ``self.step``; returns its metrics row (host values)."""
        if self.step >= self.total_steps:
            raise ValueError(f"train_step: the run's {self.total_steps} steps are done")
        t0 = time.perf_counter()
        step = self.step
        lr = lr_at(step, self.total_steps, self.cfg.optim)
        self.engine.set_lr(lr)
        prepared, host_wait = self._prepared(step)
        batches = prepared.batches
        split = self._splits_ce(step)
        device = self.info.device
        # loss, ce, kl, teacher_ce (summed over micro-batches), then this rank's host totals
        # (tokens, samples, model and hardware FLOPs, the reference's tokens); summed over ranks.
        stats = torch.zeros(9, dtype=torch.float64, device=device)
        stats[4:].copy_(prepared.totals, non_blocking=True)
        for j, batch in enumerate(batches):
            batch = batch.to(device, non_blocking=True)
            self.engine.start_micro_batch(last=j == len(batches) - 1)
            loss, ce, kl, teacher_ce = self.engine(batch, split)
            self.engine.backward(loss)
            stats[:4] += torch.stack([loss.detach(), ce, kl, teacher_ce]).double()
        result = self.engine.finish_step(stats)  # the step's one host sync (inside)
        loss, ce, kl, teacher_ce, tokens, n_samples, model_flops, hardware_flops, reference = (
            result.stats
        )
        elapsed = time.perf_counter() - t0
        self.step += 1
        row = {
            "step": self.step,
            "loss": loss,
            "ce": ce,
            "teacher_ce": teacher_ce if split else None,
            "student_ce": ce - teacher_ce if split else None,
            "kl": kl,
            "mask_rate": mask_rate(step, self.total_steps),
            "lr": lr,
            "grad_norm": result.grad_norm,
            "samples": int(n_samples),
            "tokens": int(tokens),
            "reference_tokens": int(reference),
            "tokens_per_s": tokens / elapsed,
            "samples_per_s": n_samples / elapsed,
            "model_flops": model_flops,
            "hardware_flops": hardware_flops,
            "skipped": not result.applied,
            "time": elapsed,
            "host_wait": host_wait,
        }
        if self.peak_flops:
            # All ranks' FLOPs (train.flops: the one count) over all ranks' peak, same seconds.
            flops = StepFlops(model_flops, hardware_flops)
            row.update(utilisation(flops, elapsed, self.info.world_size, self.peak_flops))
        if result.applied:
            self._skipped_in_a_row = 0
        else:
            self.skipped += 1
            self._skipped_in_a_row += 1
            if self.info.is_main:
                log.warning(
                    "step %d: non-finite loss (%s) or gradient norm (%s): update skipped, weights "
                    "unchanged (%d skipped so far)",
                    self.step,
                    loss,
                    result.grad_norm,
                    self.skipped,
                )
        row["skipped_total"] = self.skipped
        self.metrics.log(row)
        if self._skipped_in_a_row >= self.cfg.train.max_skipped_steps:
            raise NonFiniteError(
                f"{self._skipped_in_a_row} optimizer steps in a row had a non-finite loss "
                f"or gradient (last: step {self.step}); stopping: lower optim.lr or check "
                "the data."
            )
        return row

    # -- the held-out loss ----------------------------------------------------------------------

    def validation_batches(self) -> Iterator[PackedBatch]:
        """This rank's micro-batches of the held-out samples, masked as the step just trained
        was (its mask rate), packed one at a time."""
        info = self.info
        step = max(self.step - 1, 0)
        return validation.validation_batches(
            self.validation, self.cfg, step, self.total_steps, info.rank, info.world_size
        )

    def validate(self) -> dict[str, Any]:
        """The held-out loss at the current step (every rank calls this): a metrics row
        (``val_loss``, ``val_ce``, ``val_kl``, ...), written and logged by rank 0."""
        if not self.validation:
            raise ValueError("validate: no held-out data (data.validation_files or _fraction)")
        row = {"step": self.step}
        row |= validation.validation_loss(self.engine, self.validation_batches(), self.info.device)
        self.metrics.log_validation(row)
        return row

    def _validation_due(self) -> bool:
        every = self.cfg.train.eval_every
        due = self.step == self.total_steps or (every and self.step % every == 0)
        return bool(self.validation) and bool(due)

    # -- the loop -----------------------------------------------------------------------------

    def save(self) -> Path:
        """A resumable checkpoint of the current step (every rank calls this)."""
        return checkpoint.save_checkpoint(
            self.out_dir,
            self.step,
            self.engine,
            self.model,
            self.tokenizer,
            self.info,
            {
                "total_steps": self.total_steps,
                "skipped": self.skipped,
                "tokenizer_sha256": self.tokenizer_sha256,
                "held_out_sha256": self.held_out_sha256,
                "plan_sha256": self.plan_sha256,
                "totals": self.metrics.totals,
            },
            self.cfg.checkpoint.keep_last,
            self.cfg.checkpoint.model_only,
            card=self.model_card(),
        )

    def model_card(self) -> str | None:
        """The run's model card at this step (rank 0; None on the others)."""
        if not self.info.is_main:
            return None
        progress = {
            "step": self.step,
            "total_steps": self.total_steps,
            "skipped": self.skipped,
            "totals": self.metrics.totals,
            "last_row": self.metrics.last_row,
            "last_validation": self.metrics.last_validation,
            "hardware": model_card.hardware(self.info.device, self.info.world_size),
            "engine": f"{self.engine.describe()}, {self.dtype}",
        }
        return model_card.run_card(self.cfg, self.data_counts, progress, self.manifests)

    def train(self) -> dict[str, Any]:
        """Train to the end of the plan, saving every ``checkpoint.save_every`` steps and the
        final model to OUT/final. Returns a summary (steps, skipped, last loss)."""
        every = self.cfg.checkpoint.save_every
        row: dict[str, Any] = {}
        held_out: dict[str, Any] = {}
        start = self.step
        epochs = EpochReport(self.plan, len(self.samples), start)
        while self.step < self.total_steps:
            row = self.train_step()
            line = epochs.add(row)
            if line and self.info.is_main:
                log.info(line)
            if self._validation_due():
                held_out = self.validate()
            if every and self.step % every == 0 and self.step < self.total_steps:
                self.save()
        if every and self.step > start:  # a finished run resumed has its last checkpoint
            self.save()
        final_saved = (self.out_dir / "final" / "config.json").is_file()
        if self.cfg.checkpoint.save_final and (
            self.step > start or not distributed.broadcast_object(final_saved)
        ):
            full = self.engine.full_state_dict()
            if self.info.is_main:
                checkpoint.save_final_model(
                    self.model, self.tokenizer, full, self.out_dir, self.model_card()
                )
            distributed.barrier()
        return {
            "steps": self.step,
            "total_steps": self.total_steps,
            "skipped": self.skipped,
            "loss": row.get("loss"),
            "val_loss": held_out.get("val_loss"),
            "out_dir": str(self.out_dir),
        }

    def close(self) -> None:
        """Flush metrics, draw the loss plot, end the process group."""
        self._host.shutdown(wait=True, cancel_futures=True)
        self.metrics.close()
        if self._lock is not None:
            checkpoint.release_lock(self._lock, self._lock_made)
        distributed.shutdown()
