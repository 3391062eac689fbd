"""What a start refuses before any work: a config this machine or engine cannot run, and
model folders or data files that are not there; each named in one line before a tokenizer is
trained, data is read or weights are loaded."""

from __future__ import annotations

import os

from reflectioncoder.config import RunConfig
from reflectioncoder.cpus import usable_cores
from reflectioncoder.errors import ConfigError, require_file
from reflectioncoder.train import deepspeed_config
from reflectioncoder.train.distributed import DistInfo
from reflectioncoder.train.fsdp_engine import check_fsdp_run
from reflectioncoder.train.host_optimizer import wants_host_optimizer


def check_runnable(cfg: RunConfig, info: DistInfo) -> None:
    """The engine, the kernels and the data the config names can run here."""
    if not info.deepspeed:  # offload_optimizer true on several ranks: before the model
        wants_host_optimizer(cfg, info)
    check_fsdp_run(cfg, info.device)
    if cfg.model.fused_projections and deepspeed_config.uses_zero3(cfg, info):
        raise ConfigError(
            "not with ZeRO-3 (its hooks gather each projection's own weights): set it false "
            "or use ZeRO stage 0-2",
            field="model.fused_projections",
        )
    if cfg.model.attention != "auto":  # a named kernel that cannot run: before any work
        from reflectioncoder.kernels.varlen_attention import unavailable_reason

        why = unavailable_reason(cfg.model.attention, info.device)
        if why is not None:
            raise ConfigError(f"{cfg.model.attention!r} does not run here: {why}",
                              field="model.attention")  # fmt: skip
    cores = os.cpu_count() or 1
    if cfg.train.threads is not None and cfg.train.threads > cores:  # torch crashes far above
        raise ConfigError(f"expected at most the {cores} cores here, got {cfg.train.threads}",
                          field="train.threads")  # fmt: skip
    usable = usable_cores()  # more tokenising processes than cores only share them
    if cfg.data.num_workers > usable:
        raise ConfigError(
            f"expected at most the {usable} usable cores here (affinity, CPU quota), got "
            f"{cfg.data.num_workers}",
            field="data.num_workers",
        )
    if not cfg.data.files:  # the presets name none: the first thing a new user meets
        raise ConfigError(
            "no training files given, e.g. --set data.files=[data/reflection.jsonl]",
            field="data.files",
        )
    if cfg.train.eval_every and not (cfg.data.validation_files or cfg.data.validation_fraction):
        raise ConfigError(
            "no held-out data to evaluate: set data.validation_files or data.validation_fraction",
            field="train.eval_every",
        )


def check_paths(cfg: RunConfig) -> None:
    """The model folders (and ``model.config_overrides`` against the model's config), then every
    data file: a folder or a typo is named in one line before a tokenizer is trained, data is
    read or weights are loaded."""
    from reflectioncoder.model_config import read_model_config, resolve_model_path

    if cfg.model.name_or_path is not None:
        folder = resolve_model_path(cfg.model.name_or_path, "model.name_or_path")
        read_model_config(folder, cfg.model.config_overrides)  # each override fits its config
    if cfg.model.tokenizer is not None:
        resolve_model_path(cfg.model.tokenizer, "model.tokenizer", need="tokenizer")
    for field in ("data.files", "data.validation_files"):
        for path in getattr(cfg.data, field.split(".")[1]):
            require_file(path, "data file", field=field)
