"""Run config: presets (SPEC §4), YAML + overrides, validation errors that name the field."""

from __future__ import annotations

import json

import pytest
import yaml

from reflectioncoder.config import (
    CheckpointConfig,
    DistributedConfig,
    ModelConfig,
    OptimConfig,
    TrainConfig,
)
from reflectioncoder.config_loader import load_config, parse_override


def test_paper_preset_is_spec_section_4():
    cfg = load_config(base="paper")
    assert cfg.optim.lr == 5e-5
    assert cfg.optim.schedule == "cosine"
    assert cfg.optim.warmup_ratio == 0.05
    assert cfg.train.epochs == 2
    assert cfg.train.samples_per_step == 512
    assert cfg.data.max_len == 4096
    assert cfg.model.dtype == "bf16"
    assert cfg.model.gradient_checkpointing is True
    # ZeRO-1 on several ranks; one rank: the one-process engine (its optimizer on the host)
    assert cfg.distributed.backend == "auto" and cfg.distributed.zero_stage == 1
    assert cfg.train.seed == 3407
    assert cfg.mask.strategies == ("block_mask",) and cfg.mask.block_order == "tce"
    assert cfg.mask.distill and cfg.mask.kl


def test_tiny_preset_builds_a_model_from_config():
    cfg = load_config(base="tiny")
    assert cfg.model.name_or_path is None and cfg.model.arch["num_layers"] >= 1
    assert cfg.distributed.backend == "none"


def test_yaml_with_preset_then_overrides(tmp_path, seed):
    lr = 1e-5 * (1 + seed % 7)
    path = tmp_path / "run.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "preset": "tiny",
                "optim": {"lr": lr},
                "data": {"files": ["a.jsonl", "b.jsonl"], "upsample": [1, 2]},
            }
        )
    )
    cfg = load_config(
        path,
        [
            "train.samples_per_step=3",
            "mask.strategies=[random_token_mask, block_mask]",
            "mask.block_order=etc",
            "optim.betas=[0.9, 0.95]",
            "optim.weight_decay=1e-2",
            "packing.normalisation=token",
        ],
    )
    assert cfg.optim.lr == pytest.approx(lr)
    assert cfg.data.files == ["a.jsonl", "b.jsonl"] and cfg.data.upsample == [1, 2]
    assert cfg.train.samples_per_step == 3
    assert cfg.mask.strategies == ("random_token_mask", "block_mask")
    assert cfg.mask.block_order == "etc"
    assert cfg.optim.betas == (0.9, 0.95)
    assert cfg.optim.weight_decay == 0.01
    assert cfg.packing.normalisation == "token"
    # The tiny preset's values survive where the file says nothing.
    assert cfg.model.arch == load_config(base="tiny").model.arch
    # Round trip: a saved config loads to the same thing.
    cfg.save(tmp_path / "saved.yaml")
    assert load_config(tmp_path / "saved.yaml").to_dict() == cfg.to_dict()


def test_parse_override_values():
    assert parse_override("optim.lr=1e-4") == (["optim", "lr"], 1e-4)
    assert parse_override("train.max_steps=null") == (["train", "max_steps"], None)
    assert parse_override("logging.tensorboard=false") == (["logging", "tensorboard"], False)
    with pytest.raises(ValueError, match="section.field=value"):
        parse_override("optim.lr")


@pytest.mark.parametrize(
    "override, field",
    [
        ("optim.lr=0", "optim.lr"),
        ("optim.lrr=1", "optim"),  # unknown field
        ("optim.schedule=exp", "optim.schedule"),
        ("optim.warmup_ratio=1.5", "optim.warmup_ratio"),
        ("optim.betas=[0.9]", "optim.betas"),
        ("train.epochs=0", "train.epochs"),
        ("train.tokens_per_step=100", "train.samples_per_step"),  # both given
        ("distributed.zero_stage=4", "distributed.zero_stage"),
        ("distributed.backend=mpi", "distributed.backend"),
        ("distributed.deepspeed_config=/nonexistent/ds.json", "distributed.deepspeed_config"),
        ("checkpoint.keep_last=0", "checkpoint.keep_last"),
        ("logging.log_every=0", "logging.log_every"),
        ("model.dtype=int8", "model.dtype"),
        ("mask.strategies=[random_blok_mask]", "mask.strategies"),  # data room's check
        ("mask.block_order=tcc", "mask.block_order"),
        ("packing.normalisation=batch", "packing.normalisation"),
        ("data.max_len=1", "data.max_len"),
        ("nosection.x=1", "nosection"),
    ],
)
def test_bad_values_raise_naming_the_field(override, field):
    with pytest.raises(ValueError) as err:
        load_config(base="tiny", overrides=[override])
    assert str(err.value).startswith(field) or f"{field}" in str(err.value)


def test_dataclasses_validate_directly():
    with pytest.raises(ValueError, match="model.arch"):
        ModelConfig()  # neither a checkpoint nor an architecture
    with pytest.raises(ValueError, match="optim.grad_clip"):
        OptimConfig(grad_clip=-1)
    with pytest.raises(ValueError, match="train.samples_per_step"):
        TrainConfig(samples_per_step=None, tokens_per_step=None)
    with pytest.raises(ValueError, match="checkpoint.save_every"):
        CheckpointConfig(save_every=-1)
    with pytest.raises(ValueError, match="distributed.timeout_minutes"):
        DistributedConfig(timeout_minutes=0)


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ValueError, match="file not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim: [1, 2\n")
    with pytest.raises(ValueError, match="invalid YAML"):
        load_config(bad)
    with pytest.raises(ValueError, match="preset: unknown"):
        load_config(base="huge")


def test_deepspeed_json_auto_values_are_filled(tmp_path):
    """A DeepSpeed JSON in the reference's (HF Trainer) format works as is."""
    from reflectioncoder.train.deepspeed_config import deepspeed_config
    from reflectioncoder.train.distributed import DistInfo

    ds = {
        "bf16": {"enabled": "auto"},
        "optimizer": {"type": "AdamW", "params": {"lr": "auto", "weight_decay": "auto"}},
        "scheduler": {"type": "WarmupDecayLR", "params": {"warmup_num_steps": "auto"}},
        "zero_optimization": {
            "stage": 1,
            "overlap_comm": True,
            "reduce_bucket_size": "auto",
        },
        "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto",
        "train_batch_size": "auto",
        "train_micro_batch_size_per_gpu": "auto",
    }
    path = tmp_path / "ds.json"
    path.write_text(json.dumps(ds))
    cfg = load_config(base="paper", overrides=[f"distributed.deepspeed_config={path}"])
    import torch

    info = DistInfo(0, 8, 0, torch.device("cuda", 0), True)
    out = deepspeed_config(cfg, info)
    assert "optimizer" not in out and "scheduler" not in out  # the trainer owns both
    assert out["bf16"]["enabled"] is True
    assert out["gradient_clipping"] == cfg.optim.grad_clip
    assert out["train_batch_size"] == 8 and out["gradient_accumulation_steps"] == 1
    assert out["zero_optimization"]["stage"] == 1 and out["zero_optimization"]["overlap_comm"]
    assert "reduce_bucket_size" not in out["zero_optimization"]
    assert not any(v == "auto" for v in out.values())


def test_train_command_prints_config_and_rejects_bad_values(capsys, seed):
    """The thin CLI: --print-config shows the resolved config; a bad value exits 2, naming it."""
    from reflectioncoder.cli import main

    lr = 1e-5 * (1 + seed % 5)
    capsys.readouterr()  # the seed fixture's line
    assert main(["train", "--preset", "paper", "--set", f"optim.lr={lr}", "--print-config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["optim"]["lr"] == pytest.approx(lr)
    assert printed["train"]["samples_per_step"] == 512
    assert main(["train", "--preset", "tiny", "--set", "optim.warmup_ratio=2"]) == 2
    assert "optim.warmup_ratio" in capsys.readouterr().err
    assert main(["train"]) == 2  # neither --config nor --preset


@pytest.mark.parametrize(
    "override, field, expected",
    [
        ("optim.lr=fast", "optim.lr", "a number"),
        ("train.seed=abc", "train.seed", "an integer"),
        ("logging.tensorboard=maybe", "logging.tensorboard", "true or false"),
        ("train.samples_per_step=4.5", "train.samples_per_step", "an integer"),
        ("train.epochs=[1]", "train.epochs", "a number"),
        ("model.arch=3", "model.arch", "a mapping"),
        ("data.upsample=[1, x]", "data.upsample[1]", "an integer"),
    ],
)
def test_values_are_checked_by_type_naming_field_value_and_expectation(override, field, expected):
    with pytest.raises(ValueError) as err:
        load_config(base="tiny", overrides=[override])
    message = str(err.value)
    assert f"{field}: expected {expected}" in message
    assert override.split("=", 1)[1] in message  # the value, and the --set that gave it
    assert message.startswith(f"--set {override}")


def test_yaml_and_set_read_scientific_notation_alike(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("preset: tiny\noptim:\n  lr: 1e-3\n  eps: 1E-6\ntrain:\n  epochs: 3\n")
    from_yaml = load_config(path)
    from_set = load_config(
        base="tiny", overrides=["optim.lr=1e-3", "optim.eps=1E-6", "train.epochs=3"]
    )
    assert from_yaml.optim.lr == from_set.optim.lr == 1e-3
    assert from_yaml.optim.eps == from_set.optim.eps == 1e-6
    assert isinstance(from_yaml.train.epochs, float) and from_yaml.train.epochs == 3.0


def test_yaml_errors_name_file_line_and_column(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("preset: tiny\ntrain:\n  seed: 7\n  samples_per_step: lots\n")
    with pytest.raises(ValueError) as err:
        load_config(path)
    assert str(err.value) == (
        f"{path}:4:21: train.samples_per_step: expected an integer, got 'lots'"
    )
    path.write_text("preset: tiny\noptim:\n  lr: -1e-3\n")
    with pytest.raises(ValueError, match=rf"{path}:3:7: optim.lr: must be > 0"):
        load_config(path)
