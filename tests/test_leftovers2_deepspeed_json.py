"""A DeepSpeed JSON (``distributed.deepspeed_config``) with a misspelt key stops the launch in one
line naming the file, the line, the key path and the key meant (exit 2), before anything is
written: DeepSpeed ignored a misspelt top-level key silently (``zero_optimisation``: no ZeRO at
all) and stopped on a misspelt ZeRO key with a pydantic traceback once the model had loaded and
the run folder was written. What is checked is what the installed DeepSpeed reads (its parser
and config models), so the keys it knows still pass."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from reflectioncoder.cli import main
from reflectioncoder.config_loader import load_config
from reflectioncoder.testing.toy_jsonl import write_toy_jsonl
from reflectioncoder.train.deepspeed_config import deepspeed_config
from reflectioncoder.train.deepspeed_reads import deepspeed_json_problem
from reflectioncoder.train.distributed import DistInfo

REPO = Path(__file__).resolve().parent.parent
INFO = DistInfo(rank=0, world_size=2, local_rank=0, device=torch.device("cpu"), deepspeed=True)

# A JSON as users bring them (transformers' ZeRO-3 offload example and DeepSpeed's documented
# sections): every key here is one DeepSpeed 0.19.8 reads.
ACCEPTED = {
    "fp16": {"enabled": "auto", "loss_scale": 0, "loss_scale_window": 1000,
             "initial_scale_power": 16, "hysteresis": 2, "min_loss_scale": 1},
    "bf16": {"enabled": "auto"},
    "optimizer": {"type": "AdamW", "params": {"lr": "auto", "betas": "auto", "eps": "auto",
                                              "weight_decay": "auto"}},
    "scheduler": {"type": "WarmupLR", "params": {"warmup_num_steps": "auto"}},
    "zero_optimization": {
        "stage": 3, "offload_optimizer": {"device": "cpu", "pin_memory": True},
        "offload_param": {"device": "cpu", "pin_memory": True}, "overlap_comm": True,
        "contiguous_gradients": True, "sub_group_size": 1e9, "reduce_bucket_size": "auto",
        "stage3_prefetch_bucket_size": "auto", "stage3_param_persistence_threshold": "auto",
        "stage3_max_live_parameters": 1e9, "stage3_max_reuse_distance": 1e9,
        "stage3_gather_16bit_weights_on_model_save": True, "round_robin_gradients": True,
        "allgather_partitions": True, "allgather_bucket_size": 5e8, "reduce_scatter": True,
    },
    "activation_checkpointing": {"partition_activations": False, "cpu_checkpointing": False,
                                 "contiguous_memory_optimization": False,
                                 "number_checkpoints": None, "profile": False},
    "flops_profiler": {"enabled": False, "profile_step": 1, "module_depth": -1,
                       "top_modules": 1, "detailed": True, "output_file": None},
    "aio": {"block_size": 1048576, "queue_depth": 8, "single_submit": False,
            "overlap_events": True},
    "autotuning": {"enabled": False},
    "comms_logger": {"enabled": False, "verbose": False, "prof_all": True, "debug": False},
    "tensorboard": {"enabled": False, "output_path": "tb"},
    "checkpoint": {"use_node_local_storage": False, "load_universal": False},
    "data_types": {"grad_accum_dtype": "fp32"},
    "communication_data_type": "fp32",
    "gradient_clipping": "auto",
    "steps_per_print": 2000,
    "vocabulary_size": 32000,  # read by DeepSpeed's checks, not its parser
    "sequence_parallel_size": 1,  # read by deepspeed.initialize itself
    "data_parallel_size": 2,
    "wall_clock_breakdown": False,
    "train_batch_size": "auto",
    "train_micro_batch_size_per_gpu": "auto",
    "gradient_accumulation_steps": "auto",
}  # fmt: skip


def _with(path: tuple, key: str, value) -> dict:
    """``ACCEPTED`` with ``key`` (a misspelling) added under ``path``."""
    data = json.loads(json.dumps(ACCEPTED))
    node = data
    for part in path:
        node = node[part]
    node[key] = value
    return data


@pytest.mark.parametrize("name", ["configs/ds_zero3.json", "ACCEPTED"])
def test_keys_deepspeed_reads_pass(tmp_path, name):
    path = REPO / name if name.endswith(".json") else tmp_path / "ds.json"
    if name == "ACCEPTED":
        path.write_text(json.dumps(ACCEPTED, indent=2))
    overrides = ["distributed.backend=deepspeed", f"distributed.deepspeed_config={path}"]
    run = load_config(base="tiny", overrides=overrides)
    filled = deepspeed_config(run, INFO, hidden_size=64)
    assert filled["zero_optimization"]["stage"] == 3


@pytest.mark.parametrize(
    ("where", "key", "value", "meant"),
    [
        ((), "zero_optimisation", {"stage": 2}, "zero_optimization"),
        (("zero_optimization",), "stage3_prefetch_bucket_sise", 5e7,
         "zero_optimization.stage3_prefetch_bucket_size"),
        # "auto" values DeepSpeed drops unread: a misspelt one is found all the same
        (("zero_optimization",), "stage3_prefetch_bucket_sise", "auto",
         "zero_optimization.stage3_prefetch_bucket_size"),
        (("zero_optimization",), "offload_optimiser", {"device": "cpu"},
         "zero_optimization.offload_optimizer"),
        (("zero_optimization", "offload_optimizer"), "pin_memroy", True,
         "zero_optimization.offload_optimizer.pin_memory"),
        (("data_types",), "grad_accum_dtyp", "fp32", "data_types.grad_accum_dtype"),
    ],
)  # fmt: skip
def test_a_misspelt_key_is_named_with_the_key_meant(where, key, value, meant):
    path, reason = deepspeed_json_problem(_with(where, key, value))
    assert path == (*where, key)
    assert reason.startswith(f"unknown key (did you mean {meant}?)"), reason


def _tree(folder: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.stat().st_size)
        for p in sorted(folder.rglob("*"))
    }


@pytest.mark.parametrize("resume", [False, True])
def test_the_launch_stops_in_one_line_touching_nothing(tmp_path, capsys, resume):
    data = write_toy_jsonl(tmp_path / "d.jsonl", 4)
    ds = tmp_path / "ds.json"
    ds.write_text(json.dumps(_with(("zero_optimization",), "offload_optimiser", {}), indent=2))
    out = tmp_path / "run"
    if resume:  # a run folder as a run leaves it: --resume must not touch it either
        (out / "checkpoints" / "step-000002").mkdir(parents=True)
        (out / "metrics.jsonl").write_text('{"step": 2}\n')
        (out / "config.yaml").write_text("x: 1\n")
    before = _tree(out) if resume else None
    argv = ["train", "--preset", "tiny", "--set", f"data.files=[{data}]",
            "--set", f"checkpoint.out_dir={out}", "--set", "distributed.backend=deepspeed",
            "--set", f"distributed.deepspeed_config={ds}"] + (["--resume"] * resume)  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    line = next(n for n, text in enumerate(ds.read_text().splitlines(), 1) if "optimiser" in text)
    assert err == [
        f"reflectioncoder train: {ds}:{line}:5: zero_optimization.offload_optimiser: unknown key "
        "(did you mean zero_optimization.offload_optimizer?): DeepSpeed 0.19.8 has no such setting"
    ]
    assert (_tree(out) == before) if resume else not os.path.exists(out)
