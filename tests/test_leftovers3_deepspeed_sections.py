"""The DeepSpeed JSON sections DeepSpeed's config parser hands on whole are checked key by key
against the code that takes them: ``scheduler.params`` against the keyword arguments of the
scheduler class ``scheduler.type`` names (DeepSpeed's ``lr_schedules`` or torch's), and
``pipeline`` against DeepSpeed's pipeline defaults and the keys its pipeline engine reads. A
typo there passed the check (DeepSpeed ignored it, or stopped with a TypeError once the engine
was built); the schedulers' own params, as DeepSpeed makes and documents them, still pass."""

from __future__ import annotations

import argparse
import json
import logging

import pytest
import torch

from reflectioncoder.cli import main
from reflectioncoder.errors import ConfigError
from reflectioncoder.testing.toy_jsonl import write_toy_jsonl
from reflectioncoder.train.deepspeed_json import read_deepspeed_json
from reflectioncoder.train.deepspeed_reads import deepspeed_json_problem

lr_schedules = pytest.importorskip("deepspeed.runtime.lr_schedules")


def _deepspeeds_own_sections() -> dict[str, dict]:
    """The scheduler section DeepSpeed itself writes for each of its schedules, at its
    defaults (``lr_schedules.get_config_from_args`` over its own argument parser)."""
    sections = {}
    for name in lr_schedules.VALID_LR_SCHEDULES:
        parser = argparse.ArgumentParser()
        lr_schedules.add_tuning_arguments(parser)
        sections[name], _ = lr_schedules.get_config_from_args(
            parser.parse_args(["--lr_schedule", name])
        )
    return sections


# DeepSpeed's documented examples (docs/_pages/config-json.md, tutorials/one-cycle.md,
# tutorials/lrrt.md), transformers' ds configs ("auto" filled by its Trainer) and a torch one
DOCUMENTED = {
    "one_cycle": {"type": "OneCycle", "params": {
        "cycle_first_step_size": 1000, "cycle_first_stair_count": 500,
        "cycle_second_step_size": 1000, "cycle_second_stair_count": 500,
        "decay_step_size": 1000, "cycle_min_lr": 0.0001, "cycle_max_lr": 0.0010,
        "decay_lr_rate": 0.001, "cycle_momentum": True, "cycle_min_mom": 0.85,
        "cycle_max_mom": 0.99, "decay_mom_rate": 0.0}},
    "lr_range_test": {"type": "LRRangeTest", "params": {
        "lr_range_test_min_lr": 0.0001, "lr_range_test_step_size": 200,
        "lr_range_test_step_rate": 5, "lr_range_test_staircase": False}},
    "warmup_lr": {"type": "WarmupLR", "params": {"warmup_min_lr": 0, "warmup_max_lr": 0.001,
                                                 "warmup_num_steps": 1000, "warmup_type": "linear",
                                                 "last_batch_iteration": -1}},
    "hf_warmup_lr": {"type": "WarmupLR", "params": dict.fromkeys(
        ("warmup_min_lr", "warmup_max_lr", "warmup_num_steps"), "auto")},
    "hf_warmup_decay_lr": {"type": "WarmupDecayLR", "params": dict.fromkeys(
        ("total_num_steps", "warmup_min_lr", "warmup_max_lr", "warmup_num_steps"), "auto")},
    "warmup_cosine_lr": {"type": "WarmupCosineLR", "params": {
        "total_num_steps": 10000, "warmup_min_ratio": 0.0, "warmup_num_steps": 100,
        "cos_min_ratio": 0.0001}},
    "torch_cosine": {"type": "CosineAnnealingLR", "params": {"T_max": 1000, "eta_min": 1e-6}},
}  # fmt: skip

PIPELINES = {
    "documented": {"stages": "auto", "partition": "best", "seed_layers": False,
                   "activation_checkpoint_interval": 0},
    "every_key": {"stages": 2, "partition": "uniform", "seed_layers": True,
                  "activation_checkpoint_interval": 1, "pipe_partitioned": False,
                  "grad_partitioned": False, "use_reentrant": False},
}  # fmt: skip


def _builds(section: dict) -> None:
    """What DeepSpeed's engine does with the section: ``scheduler(optimizer, **params)``."""
    scheduler = getattr(lr_schedules, section["type"], None) or getattr(
        torch.optim.lr_scheduler, section["type"]
    )
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1e-3, momentum=0.9)
    logging.disable(logging.WARNING)
    try:
        scheduler(optimizer, **section.get("params", {}))
    finally:
        logging.disable(logging.NOTSET)


@pytest.mark.parametrize("name", [*sorted(DOCUMENTED), *lr_schedules.VALID_LR_SCHEDULES])
def test_schedulers_as_deepspeed_makes_and_documents_them_pass(name):
    section = DOCUMENTED.get(name) or _deepspeeds_own_sections()[name]
    assert deepspeed_json_problem({"scheduler": section}) is None
    if name in DOCUMENTED and "auto" not in json.dumps(section):
        _builds(section)  # and DeepSpeed builds the scheduler from them


@pytest.mark.parametrize("name", sorted(PIPELINES))
def test_pipeline_sections_deepspeed_reads_pass(name):
    assert deepspeed_json_problem({"pipeline": PIPELINES[name]}) is None


@pytest.mark.parametrize(
    ("section", "meant"),
    [
        ({"type": "WarmupLR", "params": {"warmup_max_lrr": 1e-3}}, "warmup_max_lr"),
        ({"type": "WarmupDecayLR", "params": {"total_num_step": "auto"}}, "total_num_steps"),
        ({"type": "OneCycle", "params": {"cycle_min_lrr": 1e-4}}, "cycle_min_lr"),
        ({"type": "LRRangeTest", "params": {"lr_range_test_min": 1e-4}}, "lr_range_test_min_lr"),
        ({"type": "WarmupCosineLR", "params": {"cos_min_ration": 0.1}}, "cos_min_ratio"),
        ({"type": "CosineAnnealingLR", "params": {"t_max": 100}}, "T_max"),
    ],
)  # fmt: skip
def test_a_misspelt_scheduler_param_is_named_and_deepspeed_refuses_it(section, meant):
    key = next(iter(section["params"]))
    path, reason = deepspeed_json_problem({"scheduler": section})
    assert path == ("scheduler", "params", key)
    assert reason.startswith(f"unknown key (did you mean scheduler.params.{meant}?)"), reason
    with pytest.raises(TypeError, match="unexpected keyword argument"):
        _builds({**section, "params": {k: 1 for k in section["params"]}})


def test_a_scheduler_type_deepspeed_does_not_build_is_named_with_the_one_meant():
    path, reason = deepspeed_json_problem({"scheduler": {"type": "WarmupLr", "params": {}}})
    assert path == ("scheduler", "type")
    assert reason == (
        "'WarmupLr' is not a scheduler DeepSpeed 0.19.8 builds (did you mean WarmupLR?)"
    )


def test_a_misspelt_pipeline_key_is_named_with_the_key_meant():
    path, reason = deepspeed_json_problem({"pipeline": {"activation_checkpoint_intervall": 1}})
    assert path == ("pipeline", "activation_checkpoint_intervall")
    assert reason.startswith("unknown key (did you mean pipeline.activation_checkpoint_interval?)")


# transformers' ds_config_zero2.json layout, one scheduler param misspelt
HF_ZERO2 = """{
    "bf16": {"enabled": "auto"},
    "optimizer": {"type": "AdamW", "params": {"lr": "auto", "weight_decay": "auto"}},
    "scheduler": {
        "type": "WarmupDecayLR",
        "params": {
            "total_num_steps": "auto",
            "warmup_min_lr": "auto",
            "warmup_max_lr": "auto",
            "warmup_num_step": "auto"
        }
    },
    "zero_optimization": {"stage": 2, "overlap_comm": true},
    "gradient_clipping": "auto",
    "train_micro_batch_size_per_gpu": "auto"
}
"""


def test_the_launch_stops_in_one_line_naming_file_line_and_key(tmp_path, capsys):
    ds = tmp_path / "ds.json"
    ds.write_text(HF_ZERO2)
    expected = (
        f"{ds}:10:13: scheduler.params.warmup_num_step: unknown key (did you mean "
        "scheduler.params.warmup_num_steps?): DeepSpeed 0.19.8 has no such setting"
    )
    with pytest.raises(ConfigError) as err:
        read_deepspeed_json(ds)
    assert str(err.value) == expected
    data, out = write_toy_jsonl(tmp_path / "d.jsonl", 4), tmp_path / "run"
    argv = ["train", "--preset", "tiny", "--set", f"data.files=[{data}]",
            "--set", f"checkpoint.out_dir={out}", "--set", "distributed.backend=deepspeed",
            "--set", f"distributed.deepspeed_config={ds}"]  # fmt: skip
    assert main(argv) == 2
    assert capsys.readouterr().err.strip().splitlines() == [f"reflectioncoder train: {expected}"]
    assert not out.exists()
