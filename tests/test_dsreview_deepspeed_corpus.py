"""DeepSpeed JSONs as users bring them (the key structure of the ReflectionCoder authors' stage
configs, transformers' and accelerate's ZeRO examples, LLaMA-Factory's ds_z*_config.json,
DeepSpeedExamples' Megatron and offload configs, DeepSpeed's documented sections) pass the
launch check, and, filled by ``deepspeed_config``, DeepSpeed 0.19.8's own ``DeepSpeedConfig``
parses them. A JSON the check refuses, DeepSpeed refuses too; a typo in each section is still
named with the key meant."""

from __future__ import annotations

import json
import logging

import pytest
import torch

from reflectioncoder.config_loader import load_config
from reflectioncoder.errors import ConfigError
from reflectioncoder.train.deepspeed_config import deepspeed_config, optim_with_deepspeed_section
from reflectioncoder.train.deepspeed_json import read_deepspeed_json
from reflectioncoder.train.deepspeed_reads import deepspeed_json_problem
from reflectioncoder.train.distributed import DistInfo

DeepSpeedConfig = pytest.importorskip("deepspeed.runtime.config").DeepSpeedConfig
ONE = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"), deepspeed=True)

_AUTO_OPTIM = {"type": "AdamW", "params": dict.fromkeys(("lr", "betas", "eps", "weight_decay"),
                                                        "auto")}  # fmt: skip
_AUTO_BATCH = dict.fromkeys(("train_batch_size", "train_micro_batch_size_per_gpu",
                             "gradient_accumulation_steps", "gradient_clipping"),
                            "auto")  # fmt: skip
_FP16 = {"enabled": "auto", "loss_scale": 0, "loss_scale_window": 1000, "initial_scale_power": 16,
         "hysteresis": 2, "min_loss_scale": 1}  # fmt: skip

ACCEPTED = {
    "reflectioncoder_stage_1": {
        "bf16": {"enabled": "auto"}, "optimizer": _AUTO_OPTIM, **_AUTO_BATCH,
        "zero_optimization": {"stage": 1, "overlap_comm": True, "contiguous_gradients": False,
                              "reduce_bucket_size": "auto"},
    },
    "reflectioncoder_stage_3": {
        "bf16": {"enabled": "auto"}, "optimizer": _AUTO_OPTIM, **_AUTO_BATCH,
        "zero_optimization": {"stage": 3, "overlap_comm": True, "contiguous_gradients": False,
                              "reduce_bucket_size": "auto", "stage3_prefetch_bucket_size": "auto",
                              "stage3_param_persistence_threshold": "auto",
                              "stage3_gather_16bit_weights_on_model_save": True},
    },
    "hf_zero2_offload": {
        "fp16": _FP16, "bf16": {"enabled": "auto"}, **_AUTO_BATCH,
        "scheduler": {"type": "WarmupLR", "params": dict.fromkeys(
            ("warmup_min_lr", "warmup_max_lr", "warmup_num_steps"), "auto")},
        "zero_optimization": {"stage": 2, "allgather_partitions": True,
                              "allgather_bucket_size": 2e8,
                              "overlap_comm": True, "reduce_scatter": True,
                              "reduce_bucket_size": "auto", "contiguous_gradients": True,
                              "offload_optimizer": {"device": "cpu", "pin_memory": True}},
        "steps_per_print": 2000, "wall_clock_breakdown": False,
    },
    "accelerate_zero3": {
        "zero_optimization": {"stage": 3,
                              "offload_optimizer": {"device": "none", "nvme_path": None},
                              "offload_param": {"device": "none", "nvme_path": None},
                              "stage3_gather_16bit_weights_on_model_save": True},
        "gradient_clipping": 1.0, "train_batch_size": "auto", "gradient_accumulation_steps": 1,
        "bf16": {"enabled": True}, "fp16": {"enabled": False},
    },
    # LLaMA-Factory's autotp config opens with a "_comment" key (JSON has no comments)
    "llamafactory_z2_autotp": {
        "_comment": "supported models: see the AutoTP tutorial", **_AUTO_BATCH,
        "zero_allow_untested_optimizer": True, "fp16": _FP16, "bf16": {"enabled": "auto"},
        "zero_optimization": {"stage": 2, "allgather_partitions": True, "overlap_comm": False,
                              "allgather_bucket_size": 5e8, "reduce_scatter": True,
                              "reduce_bucket_size": 5e8, "round_robin_gradients": True},
        "tensor_parallel": {"autotp_size": 2},
    },
    "llamafactory_z3_partial_offload": {
        **_AUTO_BATCH, "zero_force_ds_cpu_optimizer": True, "fp16": _FP16,
        "zero_optimization": {"stage": 3,
                              "offload_optimizer": {"device": "cpu", "pin_memory": False},
                              "sub_group_size": 1e9, "stage3_max_live_parameters": 1e9,
                              "stage3_max_reuse_distance": 1e9, "reduce_bucket_size": "auto"},
    },
    "llamafactory_gaudi_timers_autotuning": {
        "zero_optimization": {"stage": 1},
        "timers": {"throughput": {"enabled": True, "synchronized": False}},
        "autotuning": {"enabled": True, "results_dir": "r", "exps_dir": "e", "overwrite": False,
                       "metric": "throughput", "start_profile_step": 3, "end_profile_step": 7,
                       "fast": True, "max_train_batch_size": None, "mp_size": 1,
                       "num_tuning_micro_batch_sizes": 3, "tuner_type": "model_based",
                       "tuner_early_stopping": 5, "tuner_num_trials": 50},
    },
    "deepspeed_nvme_offload": {
        "zero_optimization": {
            "stage": 3, "stage3_max_live_parameters": 3e9, "stage3_prefetch_bucket_size": 5e7,
            "offload_optimizer": {"device": "nvme", "nvme_path": "/local_nvme", "pin_memory": True,
                                  "buffer_count": 4, "fast_init": False, "ratio": 1.0},
            "offload_param": {"device": "nvme", "nvme_path": "/local_nvme", "buffer_count": 5,
                              "buffer_size": 1e8, "max_in_cpu": 1e9},
        },
        "aio": {"block_size": 1048576, "queue_depth": 8, "intra_op_parallelism": 1,
                "single_submit": False, "overlap_events": True},
    },
    "deepspeed_sections": {
        "activation_checkpointing": {"partition_activations": False, "number_checkpoints": False,
                                     "synchronize_checkpoint_boundary": False, "profile": False},
        "flops_profiler": {"enabled": False, "recompute_fwd_factor": 0.0, "profile_step": 1,
                           "module_depth": -1, "top_modules": 1, "detailed": True},
        "comms_logger": {"enabled": True, "prof_ops": ["all_reduce"], "verbose": False},
        "tensorboard": {"enabled": True, "output_path": "log/", "job_name": "x"},
        "wandb": {"enabled": False, "group": "g", "team": "t", "project": "p"},
        "csv_monitor": {"enabled": False, "output_path": "csv/", "job_name": "x"},
        "checkpoint": {"tag_validation": "Warn", "load_universal": False,
                       "use_node_local_storage": False,
                       "parallel_write": {"pipeline_stage": False}},
        "compile": {"deepcompile": False, "offload_activation": False},
        "data_types": {"grad_accum_dtype": "fp32"}, "communication_data_type": "fp32",
        "pipeline": {"stages": "auto", "partition": "best", "activation_checkpoint_interval": 0},
        "torch_autocast": {"enabled": False},
        "hybrid_engine": {"enabled": False, "max_out_tokens": 512},
    },
    "deepspeed_data_efficiency": {  # turned off: DeepSpeed's data pipeline does not run here
        "data_efficiency": {"enabled": False, "seed": 1234, "data_sampling": {
            "enabled": False, "num_epochs": 1, "curriculum_learning": {
                "enabled": False, "data_cluster_path": "/tmp", "curriculum_metrics": {"seqlen": {
                    "index_to_sample_path": "a", "index_to_metric_path": "b",
                    "difficulty_type": "value", "clustering_type": "single_cluster",
                    "min_difficulty": 80, "max_difficulty": 2048, "schedule_type": "fixed_root",
                    "schedule_config": {"total_curriculum_step": 100, "difficulty_step": 8,
                                        "root_degree": 2}}}}}},
    },
    "deepspeed_adam_spelt_out": {  # DeepSpeed's Adam params at their defaults, written out
        "optimizer": {"type": "Adam", "params": {"lr": 3e-3, "betas": [0.9, 0.999], "eps": 1e-8,
                                                 "weight_decay": 0.0, "bias_correction": True,
                                                 "amsgrad": False, "torch_adam": True}},
        "zero_optimization": {"stage": 2},
    },
    "legacy_zero_names": {  # DeepSpeed maps these to their new names, warning
        "zero_optimization": {"stage": 3, "stage3_gather_fp16_weights_on_model_save": True},
        "bfloat16": {"enabled": True},
    },
}  # fmt: skip

# Each refused by DeepSpeed 0.19.8 itself: (the JSON, the key path the check names)
REFUSED = {
    "apex_amp_beside_fp16": ({"fp16": {"enabled": "auto"}, "amp": {"enabled": "auto"}}, ("amp",)),
    "elasticity": ({"elasticity": {"enabled": True, "max_train_batch_size": 2000}},
                   ("elasticity",)),
    "mics": ({"zero_optimization": {"stage": 3, "mics_shard_size": 8}},
             ("zero_optimization", "mics_shard_size")),
    "old_compile": ({"compile": {"enabled": True, "backend": "inductor"}}, ("compile", "enabled")),
    "zero3_init_flag": ({"zero_optimization": {"stage": 3, "zero3_init_flag": True}},
                        ("zero_optimization", "zero3_init_flag")),
    "null_buffer_count": ({"zero_optimization": {"stage": 3, "offload_param": {
        "device": "cpu", "buffer_count": None}}}, ("zero_optimization", "offload_param",
                                                   "buffer_count")),
}  # fmt: skip


def _run(tmp_path, data: dict):
    path = tmp_path / "ds.json"
    path.write_text(json.dumps(data, indent=2))
    overrides = ["distributed.backend=deepspeed", f"distributed.deepspeed_config={path}"]
    return load_config(base="tiny", overrides=overrides)


def _filled(tmp_path, data: dict) -> dict:
    run = _run(tmp_path, data)
    optim_with_deepspeed_section(run)  # its optimizer section, honoured or refused
    return deepspeed_config(run, ONE, hidden_size=64)


@pytest.mark.parametrize("name", sorted(ACCEPTED))
def test_configs_users_bring_pass_and_deepspeed_parses_them_filled(tmp_path, name):
    assert deepspeed_json_problem(ACCEPTED[name]) is None
    logging.disable(logging.WARNING)  # DeepSpeed's own deprecation warnings
    try:
        DeepSpeedConfig(_filled(tmp_path, ACCEPTED[name]))
    finally:
        logging.disable(logging.NOTSET)


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_what_the_check_refuses_deepspeed_refuses(tmp_path, name):
    data, where = REFUSED[name]
    assert deepspeed_json_problem(data)[0] == where
    with pytest.raises(Exception):  # noqa: B017 (its own error or its models' ValidationError)
        DeepSpeedConfig({**data, "train_batch_size": 1})


def test_a_removed_section_is_located_by_its_own_key(tmp_path):
    """DeepSpeed's message for "amp" names "fp16" too: the line is amp's."""
    path = tmp_path / "ds.json"
    path.write_text(json.dumps(REFUSED["apex_amp_beside_fp16"][0], indent=2))
    with pytest.raises(ConfigError) as err:
        read_deepspeed_json(path)
    assert f"{path}:5:3: amp: NVIDIA Apex AMP" in str(err.value)


@pytest.mark.parametrize(
    ("data", "meant"),
    [
        ({"_comment": "x", "zero_optimisation": {"stage": 2}}, "zero_optimization"),
        ({"zero_optimization": {"offload_param": {"pin_memmory": True}}},
         "zero_optimization.offload_param.pin_memory"),
        ({"fp16": {"initial_scale_powr": 16}}, "fp16.initial_scale_power"),
        ({"comms_logger": {"verbos": True}}, "comms_logger.verbose"),
        ({"wandb": {"projet": "x"}}, "wandb.project"),
        ({"autotuning": {"fastt": True}}, "autotuning.fast"),
        ({"timers": {"throughput": {"enabeld": True}}}, "timers.throughput.enabled"),
        ({"data_efficiency": {"data_samplng": {}}}, "data_efficiency.data_sampling"),
        ({"checkpoint": {"load_univeral": True}}, "checkpoint.load_universal"),
    ],
)  # fmt: skip
def test_typos_in_each_section_are_named_with_the_key_meant(data, meant):
    assert f"did you mean {meant}?" in deepspeed_json_problem(data)[1]


def test_a_json_with_comments_passes_as_deepspeed_reads_it(tmp_path):
    """DeepSpeed reads its config file as hjson: // and # comments, trailing commas."""
    path = tmp_path / "ds.json"
    path.write_text('{\n  // ZeRO-2\n  "zero_optimization": {"stage": 2,},\n'
                    '  "bf16": {"enabled": "auto"}, # bf16 from model.dtype\n}\n')  # fmt: skip
    assert read_deepspeed_json(path) == {"zero_optimization": {"stage": 2},
                                         "bf16": {"enabled": "auto"}}  # fmt: skip


def test_a_key_given_twice_is_named_where_it_is_repeated(tmp_path):
    """DeepSpeed refuses a file with a duplicate key; read into a dict, the last one would win
    without a word (a second "bf16" block turning bf16 off)."""
    path = tmp_path / "ds.json"
    path.write_text('{\n  "bf16": {"enabled": true},\n  "zero_optimization": {"stage": 2},\n'
                    '  "bf16": {"enabled": false}\n}\n')  # fmt: skip
    with pytest.raises(ConfigError) as err:
        read_deepspeed_json(path)
    assert str(err.value).endswith(
        f"{path}:4:3: bf16: given twice (DeepSpeed refuses duplicate keys)"
    )
    path.write_text("{\n  not json at all\n")
    with pytest.raises(ConfigError, match=r":2:3: distributed.deepspeed_config: not valid JSON"):
        read_deepspeed_json(path)


@pytest.mark.parametrize(("param", "value"), [("bias_correction", False), ("amsgrad", True)])
def test_an_adam_param_at_a_value_adamw_does_not_run_is_refused(tmp_path, param, value):
    section = {"type": "Adam", "params": {"lr": 1e-3, param: value}}
    with pytest.raises(
        ConfigError, match=rf":\d+:\d+: optimizer.params.{param}: cannot be honoured"
    ):
        optim_with_deepspeed_section(_run(tmp_path, {"optimizer": section}))
