"""The DeepSpeed JSON as users bring it: its optimizer section honoured or refused by name, an
offload device (JSON or flag) selecting DeepSpeed's CPU Adam, fp32 gradient sums at ZeRO-1/2/3,
reduce buckets sized from the model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from reflectioncoder.config_loader import load_config
from reflectioncoder.errors import ConfigError
from reflectioncoder.train.deepspeed_config import (
    deepspeed_config,
    offloads_optimizer,
    optim_with_deepspeed_section,
)
from reflectioncoder.train.deepspeed_engine import check_skipped_sums, drop_skipped_sums
from reflectioncoder.train.distributed import DistInfo

INFO = DistInfo(rank=0, world_size=2, local_rank=0, device=torch.device("cpu"), deepspeed=True)


def _run(tmp_path, ds: dict | None, *extra: str):
    overrides = ["data.files=[x.jsonl]", "distributed.backend=deepspeed", *extra]
    if ds is not None:
        path = tmp_path / "ds.json"
        path.write_text(json.dumps(ds))
        overrides.append(f"distributed.deepspeed_config={path}")
    return load_config(base="tiny", overrides=overrides)


def test_optimizer_section_is_honoured(tmp_path):
    ds = {
        "optimizer": {
            "type": "AdamW",
            "params": {"lr": 1e-4, "betas": "auto", "eps": 1e-6, "weight_decay": 0.1},
        },
        "zero_optimization": {"stage": 3, "offload_optimizer": {"device": "cpu"}},
    }
    run = _run(tmp_path, ds, "optim.betas=[0.9, 0.95]")
    optim = optim_with_deepspeed_section(run)
    assert (optim.lr, optim.eps, optim.weight_decay) == (1e-4, 1e-6, 0.1)
    assert optim.betas == (0.9, 0.95)  # "auto": ours
    cfg = deepspeed_config(run, INFO)
    assert "optimizer" not in cfg and offloads_optimizer(cfg)
    plain = _run(tmp_path, None)
    assert optim_with_deepspeed_section(plain) is plain.optim


@pytest.mark.parametrize(
    "section, message",
    [
        (
            {"type": "Lamb", "params": {"lr": 1e-3}},
            r":1:\d+: optimizer.type: 'Lamb' is not supported",
        ),
        (
            {"type": "AdamW", "params": {"lr": 1e-3, "amsgrad": True}},
            r":1:\d+: optimizer.params.amsgrad: cannot be honoured",
        ),
        (
            {"type": "Adam", "params": {"adam_w_mode": False, "weight_decay": 0.1}},
            r":1:\d+: optimizer.params.adam_w_mode: adam_w_mode=false",
        ),
        ({"type": "AdamW", "params": {"lr": -1}}, r":1:\d+: optimizer.params.lr: must be > 0"),
        (
            {"type": "AdamW", "params": {"weight_decy": 0.1}},
            r":1:\d+: optimizer.params.weight_decy: cannot be honoured \(did you mean "
            r"optimizer.params.weight_decay\?\)",
        ),
    ],
)
def test_optimizer_section_refused_by_name(tmp_path, section, message):
    """Refused as the JSON is read, naming its file:line:col and key (it named no line)."""
    run = _run(tmp_path, {"optimizer": section})
    with pytest.raises(ConfigError, match=message) as err:
        optim_with_deepspeed_section(run)
    assert f"{tmp_path / 'ds.json'}:" in str(err.value)


def test_offload_flag(tmp_path):
    run = _run(tmp_path, None, "distributed.offload_optimizer=true", "distributed.zero_stage=2")
    assert offloads_optimizer(deepspeed_config(run, INFO))
    assert not offloads_optimizer(deepspeed_config(_run(tmp_path, None), INFO))


def test_an_offloaded_zero1_runs_as_zero2(tmp_path):
    """DeepSpeed's ZeRO-1 offloaded keeps a whole fp32 gradient beside its partition
    (tests/test_zero_fp32_sums.py): offloaded, stage 1 runs as 2; not offloaded, it stays 1."""
    flag = _run(tmp_path, None, "distributed.offload_optimizer=true", "distributed.zero_stage=1")
    assert deepspeed_config(flag, INFO)["zero_optimization"]["stage"] == 2
    ds = {"zero_optimization": {"stage": 1, "offload_optimizer": {"device": "cpu"}}}
    assert deepspeed_config(_run(tmp_path, ds), INFO)["zero_optimization"]["stage"] == 2
    plain = _run(tmp_path, None, "distributed.zero_stage=1")
    assert deepspeed_config(plain, INFO)["zero_optimization"]["stage"] == 1


@pytest.mark.parametrize("stage", [1, 2, 3])
@pytest.mark.parametrize("setting", ["auto", "true", "false"])
def test_fp32_sums_at_every_zero_stage(tmp_path, stage, setting):
    """bf16 weights: fp32 sums over micro-batches and over ranks unless turned off
    (tests/test_zero_fp32_sums.py measures what DeepSpeed does with them); the BF16
    optimizer's immediate update at ZeRO-1 only."""
    sets = ("model.dtype=bf16", f"distributed.zero_stage={stage}")
    cfg = deepspeed_config(
        _run(tmp_path, None, *sets, f"distributed.fp32_grad_accum={setting}"), INFO
    )
    if setting == "false":
        assert "data_types" not in cfg and "communication_data_type" not in cfg
        return
    assert cfg["data_types"] == {"grad_accum_dtype": "fp32"}
    assert cfg["communication_data_type"] == "fp32"
    assert cfg["bf16"].get("immediate_grad_update", False) == (stage == 1)
    told = _run(tmp_path, {"communication_data_type": "bf16"}, *sets)
    assert deepspeed_config(told, INFO)["communication_data_type"] == "bf16"  # the JSON's


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_the_jsons_own_sum_dtypes_win(tmp_path, stage):
    """A DeepSpeed JSON's ``data_types.grad_accum_dtype`` and ``communication_data_type`` are
    used as written (docs/training.md); "auto" is filled with fp32."""
    sets = ("model.dtype=bf16", f"distributed.zero_stage={stage}")
    ds = {"data_types": {"grad_accum_dtype": "bf16"}, "communication_data_type": "bf16"}
    cfg = deepspeed_config(_run(tmp_path, ds, *sets), INFO)
    assert cfg["data_types"] == {"grad_accum_dtype": "bf16"}
    assert cfg["communication_data_type"] == "bf16"
    assert "immediate_grad_update" not in cfg["bf16"]  # the BF16 optimizer's: fp32 sums only
    ds = {"data_types": {"grad_accum_dtype": "auto"}}
    assert deepspeed_config(_run(tmp_path, ds, *sets), INFO)["data_types"] == {
        "grad_accum_dtype": "fp32"
    }


class _ZeroOptimizer:
    """Stand-in for DeepSpeed 0.19.8's offloaded ``DeepSpeedZeroOptimizer`` (its attributes)."""

    cpu_offload = True

    def __init__(self) -> None:
        self.averaged_gradients = {0: torch.full((4,), float("nan"))}


def test_skipped_sums_need_deepspeeds_attributes(tmp_path):
    """``drop_skipped_sums`` clears DeepSpeed's private fp32 partition: an offloaded ZeRO-1/2
    optimizer without it stops at start-up in one line, not silently after a skipped step."""
    offloaded = ("distributed.zero_stage=2", "distributed.offload_optimizer=true")
    cfg = deepspeed_config(_run(tmp_path, None, *offloaded), INFO)
    zero = _ZeroOptimizer()
    check_skipped_sums(zero, cfg)
    drop_skipped_sums(zero)
    assert zero.averaged_gradients == {0: None}
    del zero.averaged_gradients
    with pytest.raises(RuntimeError, match=r"deepspeed \S+: .*ZeRO-2 .*averaged_gradients") as err:
        check_skipped_sums(zero, cfg)
    line = str(err.value)
    assert "distributed.offload_optimizer=false" in line and "\n" not in line  # the remedy
    check_skipped_sums(object(), deepspeed_config(_run(tmp_path, None), INFO))  # not offloaded


def test_fp32_sums_need_a_zero_stage(tmp_path):
    bf16 = ("model.dtype=bf16", "distributed.fp32_grad_accum=true")
    with pytest.raises(ConfigError, match="distributed.fp32_grad_accum: needs ZeRO stage 1-3"):
        deepspeed_config(_run(tmp_path, None, *bf16), INFO)  # tiny: zero_stage 0
    fp32 = _run(tmp_path, None, "distributed.fp32_grad_accum=true", "distributed.zero_stage=0")
    assert "data_types" not in deepspeed_config(fp32, INFO)  # fp32 weights: nothing to do


def test_34b_launch_config_fills(monkeypatch):
    """docs/training.md's 34B launch: configs/paper-34b.yaml with configs/ds_zero3.json."""
    monkeypatch.chdir(Path(__file__).resolve().parent.parent)
    run = load_config(
        "configs/paper-34b.yaml", ["distributed.deepspeed_config=configs/ds_zero3.json"]
    )
    info = DistInfo(
        rank=0, world_size=32, local_rank=0, device=torch.device("cuda", 0), deepspeed=True
    )
    cfg = deepspeed_config(run, info)
    assert cfg["zero_optimization"]["stage"] == 3 and cfg["bf16"]["enabled"]
    assert cfg["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"]
    assert "auto" not in json.dumps(cfg) and not offloads_optimizer(cfg)
    assert optim_with_deepspeed_section(run) == run.optim  # all "auto": ours


def test_hub_name_outside_the_cache_is_a_clear_error(tmp_path, monkeypatch):
    from reflectioncoder.errors import UserError
    from reflectioncoder.model import resolve_model_path

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match="model.name_or_path: deepseek-ai/x: a hub name not in"):
        resolve_model_path("deepseek-ai/x")
    with pytest.raises(UserError, match="no config.json"):
        resolve_model_path(tmp_path)


def test_zero2_overlaps_its_reduction_unless_told(tmp_path):
    run = _run(tmp_path, None, "distributed.zero_stage=2")
    assert deepspeed_config(run, INFO)["zero_optimization"]["overlap_comm"] is True
    told = _run(tmp_path, {"zero_optimization": {"stage": 2, "overlap_comm": False}})
    assert deepspeed_config(told, INFO)["zero_optimization"]["overlap_comm"] is False


def test_buckets_sized_from_the_model(monkeypatch):
    """configs/ds_zero3.json's "auto" buckets: sized from D as transformers sizes them (they
    were dropped for DeepSpeed's defaults); without a model (set-up before it is built) too."""
    monkeypatch.chdir(Path(__file__).resolve().parent.parent)
    run = load_config(
        "configs/paper-34b.yaml", ["distributed.deepspeed_config=configs/ds_zero3.json"]
    )
    zero = deepspeed_config(run, INFO, hidden_size=8192)["zero_optimization"]
    assert zero["reduce_bucket_size"] == 8192**2
    assert zero["stage3_prefetch_bucket_size"] == int(0.9 * 8192**2)
    assert zero["stage3_param_persistence_threshold"] == 81920
    assert "reduce_bucket_size" not in deepspeed_config(run, INFO)["zero_optimization"]
    zero = deepspeed_config(_run_stage(3), INFO, hidden_size=64)["zero_optimization"]
    assert zero["stage3_prefetch_bucket_size"] == int(0.9 * 64**2)
    for stage in (1, 2):  # the reduce bucket at every stage; the stage-3 keys only there
        zero = deepspeed_config(_run_stage(stage), INFO, hidden_size=64)["zero_optimization"]
        assert zero["reduce_bucket_size"] == 64**2
        assert not any(key.startswith("stage3_") for key in zero)
    zero0 = deepspeed_config(_run_stage(0), INFO, hidden_size=64)["zero_optimization"]
    assert "reduce_bucket_size" not in zero0


def _run_stage(stage: int):
    return load_config(
        base="tiny",
        overrides=[
            "data.files=[x.jsonl]",
            "distributed.backend=deepspeed",
            f"distributed.zero_stage={stage}",
        ],
    )
