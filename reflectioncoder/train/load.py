"""What a run loads before it writes anything: its samples and step plan (``load_run_data``),
its tokenizer (given, the resumed run's own, or trained on the data) and its model (loaded,
built, partitioned under ZeRO-3 or on meta under FSDP), with the special tokens added. The data
and model rooms do the work; this wires them to the config."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from reflectioncoder.config import RunConfig
from reflectioncoder.data.dataset import load_dataset, tokenizer_fingerprint
from reflectioncoder.data.tokenize import TokenizedSample
from reflectioncoder.errors import UserError
from reflectioncoder.train import checkpoint, deepspeed_config, distributed, validation
from reflectioncoder.train.fsdp_load import build_on_meta
from reflectioncoder.train.schedule import plan_fingerprint, plan_steps

log = logging.getLogger("reflectioncoder.train")


def load_samples(
    cfg: RunConfig, tokenizer: Any, is_main: bool = True
) -> tuple[list[TokenizedSample], dict[str, int]]:
    """Load, validate and tokenise ``cfg.data.files`` (upsampled, cached; the data room's
    ``load_dataset``); over-length samples are dropped and counted. Each sample's ``uid`` is
    distinct (upsampled copies too), so mask draws depend on (seed, step, uid) only."""
    samples, report = load_dataset(cfg.data, tokenizer, warn=is_main)
    if not samples:  # said here, with the report: the step plan would say only "none"
        raise UserError(report.why_none_kept(cfg.data.max_len), field="data.files")
    if is_main and not (report.skipped or report.over_length):  # else load_dataset warned
        log.info("data: %s", report.summary(cfg.data.max_len))
    return samples, {
        "loaded": report.loaded,
        "samples": report.samples,
        "skipped_bad": len(report.skipped),
        "dropped_too_long": len(report.over_length),
    }


@dataclasses.dataclass
class RunData:
    """The run's training samples, its held-out ones and their counts, and its step plan (the
    sample ids of every optimizer step) with the fingerprints a checkpoint records of them."""

    samples: list[TokenizedSample]
    validation: list[TokenizedSample]
    counts: dict[str, int]
    plan: list[list[int]]
    plan_sha256: str
    held_out_sha256: str | None  # what data.validation_fraction took out (None: nothing)

    def planned(self) -> dict[str, Any]:
        """What a checkpoint records of the plan (a resumed run's is checked against it)."""
        return {
            "total_steps": len(self.plan),
            "plan_sha256": self.plan_sha256,
            "held_out_sha256": self.held_out_sha256,
        }


def load_run_data(cfg: RunConfig, tokenizer: Any, info: distributed.DistInfo) -> RunData:
    """The samples (``load_samples``), the held-out ones (``validation.split_validation``) and
    the step plan. Rank 0 tokenises (and fills data.cache_dir) first; the others then read the
    cache."""
    if info.is_main:
        samples, counts = load_samples(cfg, tokenizer, True)
        samples, held = validation.split_validation(samples, counts, cfg, tokenizer, True)
    distributed.barrier()
    if not info.is_main:
        samples, counts = load_samples(cfg, tokenizer, False)
        samples, held = validation.split_validation(samples, counts, cfg, tokenizer, False)
    plan = plan_steps([len(s) for s in samples], cfg.train)
    fraction = cfg.data.validation_fraction
    held_sha256 = validation.held_out_fingerprint(held) if fraction else None
    return RunData(samples, held, counts, plan, plan_fingerprint(samples, plan), held_sha256)


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
        from reflectioncoder.model_config import resolve_model_path

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


def check_tokenizer_fits(cfg: RunConfig, tokenizer: Any, path: Path) -> None:
    """A tokenizer whose own vocabulary runs past the model's embedding rows is another model's:
    refused from the model's config.json (with ``model.config_overrides``: refused there if
    one does not fit it), before the weights load."""
    from reflectioncoder.model_config import read_model_config

    config = read_model_config(path, cfg.model.config_overrides)
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
    from reflectioncoder.model import add_special_token_embeddings, build_tiny_llama, load_model
    from reflectioncoder.model_config import resolve_model_path
    from reflectioncoder.zero3_load import has_safetensors, load_model_into_partitions

    # DeepSpeed and FSDP load in the training dtype (they keep fp32 masters); one process loads
    # fp32 and casts later (bf16 weights with fp32 masters in the engine, or fp32 weights under
    # autocast).
    sharded = info.deepspeed or cfg.distributed.backend == "fsdp"
    load_dtype = dtype if sharded else torch.float32
    overrides = cfg.model.config_overrides  # set on the model's config before it is built
    path = None if cfg.model.name_or_path is None else resolve_model_path(cfg.model.name_or_path)
    if path is not None:
        check_tokenizer_fits(cfg, tokenizer, path)
    if path is not None and deepspeed_config.uses_zero3(cfg, info) and has_safetensors(path):
        model, _ = load_model_into_partitions(
            path,
            tokenizer,
            add_special_tokens(tokenizer),
            dtype=load_dtype,
            partition_context=deepspeed_config.zero3_partitioning(cfg, info),
            local_piece=deepspeed_config.zero3_local_piece,
            config_overrides=overrides,
        )
        return model
    if path is not None and cfg.distributed.backend == "fsdp":
        if has_safetensors(path):  # values read by each rank once sharded (FSDPEngine)
            splits = add_special_tokens(tokenizer)
            return build_on_meta(path, tokenizer, splits, load_dtype, overrides)
        if info.is_main:
            log.info(
                "FSDP: %s has no safetensors weights: each rank loads the whole model before "
                "sharding it (save it with save_pretrained to load only each rank's shards)",
                path,
            )
    if path is not None:
        model = load_model(path, dtype=load_dtype, config_overrides=overrides)
    else:
        model = build_tiny_llama(
            len(tokenizer), seed=cfg.train.seed, config_overrides=overrides, **cfg.model.arch
        )
    splits = add_special_tokens(tokenizer)
    add_special_token_embeddings(
        model, tokenizer, splits, gather_for_update=distributed.gathered_params
    )
    return model
