"""A DeepSpeed JSON's mistakes the check let through, or named without a place:

- a one-value key given an object or a list (``"gradient_clipping": {"max": 1}``) passed:
  DeepSpeed reads such keys through ``get_scalar_param``, which takes whatever is there;
- the ``optimizer`` section's errors named the section, never the file's line:col or the key;
- ``data_efficiency``'s nested sections were not checked key by key, and a section that turns
  DeepSpeed's data pipeline on passed, though the trainer never hands DeepSpeed a dataset or a
  random-LTD model: curriculum learning there would silently do nothing.

Each now stops the launch in one line, ``file:line:col: key.path: why`` (exit 2), before the
run folder exists."""

from __future__ import annotations

import json
import os

import pytest

from reflectioncoder.cli import main
from reflectioncoder.testing.toy_jsonl import write_toy_jsonl
from reflectioncoder.train.deepspeed_reads import deepspeed_json_problem

pytest.importorskip("deepspeed")

ONE_VALUE = "expected a single value (a number, a string, true/false or null), got "


def _launch(tmp_path, capsys, data: dict) -> tuple[str, list[str]]:
    """``reflectioncoder train`` with ``data`` as its DeepSpeed JSON: (the JSON's text, the
    lines on stderr); the launch must stop with exit 2 and no run folder."""
    jsonl = write_toy_jsonl(tmp_path / "d.jsonl", 4)
    ds = tmp_path / "ds.json"
    ds.write_text(json.dumps(data, indent=2))
    out = tmp_path / "run"
    argv = ["train", "--preset", "tiny", "--set", f"data.files=[{jsonl}]",
            "--set", f"checkpoint.out_dir={out}", "--set", "distributed.backend=deepspeed",
            "--set", f"distributed.deepspeed_config={ds}"]  # fmt: skip
    assert main(argv) == 2
    assert not os.path.exists(out)
    return ds.read_text(), capsys.readouterr().err.strip().splitlines()


def _where(text: str, needle: str) -> str:
    """``line:col`` of ``"needle"`` in the JSON text (its first appearance)."""
    for number, line in enumerate(text.splitlines(), 1):
        if f'"{needle}"' in line:
            return f"{number}:{line.index(needle)}"  # the column of its opening quote
    raise AssertionError(needle)


@pytest.mark.parametrize(
    ("data", "path", "kind"),
    [
        ({"gradient_clipping": {"max_norm": 1.0}}, ("gradient_clipping",), "a JSON object"),
        ({"gradient_clipping": [1.0]}, ("gradient_clipping",), "a list"),
        ({"steps_per_print": {"every": 10}}, ("steps_per_print",), "a JSON object"),
        ({"prescale_gradients": {"on": True}}, ("prescale_gradients",), "a JSON object"),
        ({"zero_allow_untested_optimizer": [True]}, ("zero_allow_untested_optimizer",), "a list"),
        ({"activation_checkpointing": {"partition_activations": {"on": True}}},
         ("activation_checkpointing", "partition_activations"), "a JSON object"),
        ({"flops_profiler": {"enabled": {"on": True}}}, ("flops_profiler", "enabled"),
         "a JSON object"),
        ({"communication_data_type": {"dtype": "fp32"}}, ("communication_data_type",),
         "a JSON object"),
        ({"wall_clock_breakdown": [False]}, ("wall_clock_breakdown",), "a list"),
    ],
)  # fmt: skip
def test_a_one_value_key_given_an_object_or_a_list_is_refused(data, path, kind):
    assert deepspeed_json_problem(data) == (path, ONE_VALUE + kind)


def test_a_section_given_a_list_says_it_wants_an_object():
    assert deepspeed_json_problem({"zero_optimization": [2]}) == (
        ("zero_optimization",), "expected a JSON object, got a list")  # fmt: skip


def test_an_object_for_gradient_clipping_stops_the_launch_naming_line_and_column(tmp_path, capsys):
    text, err = _launch(tmp_path, capsys, {"bf16": {"enabled": "auto"},
                                           "gradient_clipping": {"max_norm": 1.0}})  # fmt: skip
    ds = tmp_path / "ds.json"
    where = _where(text, "gradient_clipping")
    assert err == [f"reflectioncoder train: {ds}:{where}: gradient_clipping: {ONE_VALUE}"
                   "a JSON object"]  # fmt: skip


@pytest.mark.parametrize(
    ("section", "key", "why"),
    [
        ({"type": "SGD", "params": {"lr": 1e-3}}, "type",
         "optimizer.type: 'SGD' is not supported: the trainer runs AdamW"),
        ({"type": "AdamW", "params": {"lr": {"peak": 1e-3}}}, "lr",
         "optimizer.params.lr: expected a number, got a JSON object"),
        ({"type": "AdamW", "params": {"lr": -1}}, "lr", "optimizer.params.lr: must be > 0"),
        ({"type": "AdamW", "params": {"betas": [0.9, "x"]}}, "betas",
         "optimizer.params.betas: expected a list of two numbers, got a list"),
        ({"type": "AdamW", "params": {"lr": 1e-3, "weight_decai": 0.1}}, "weight_decai",
         "optimizer.params.weight_decai: cannot be honoured (did you mean "
         "optimizer.params.weight_decay?)"),
        ({"type": "AdamW", "params": [1e-3]}, "params",
         "optimizer.params: expected a JSON object, got a list"),
        ({"type": "WarmupLR", "params": [1]}, "params",
         "scheduler.params: expected a JSON object of the scheduler's arguments, got a list"),
    ],
)  # fmt: skip
def test_optimizer_and_scheduler_errors_name_file_line_and_column(
    tmp_path, capsys, section, key, why
):
    name = "scheduler" if section["type"] == "WarmupLR" else "optimizer"
    text, err = _launch(tmp_path, capsys, {"bf16": {"enabled": "auto"}, name: section})
    ds = tmp_path / "ds.json"
    after = text.index(f'"{name}"')
    line = text.count("\n", 0, text.index(f'"{key}"', after)) + 1
    column = text.index(f'"{key}"', after) - text.rfind("\n", 0, text.index(f'"{key}"', after))
    assert len(err) == 1 and err[0].startswith(
        f"reflectioncoder train: {ds}:{line}:{column}: {why}"
    ), err


CURRICULUM = {"enabled": False, "seed": 1234, "data_sampling": {
    "enabled": False, "num_epochs": 1, "num_workers": 0, "curriculum_learning": {
        "enabled": False, "data_cluster_path": "/tmp", "curriculum_metrics": {"seqlen": {
            "index_to_sample_path": "a", "index_to_metric_path": "b",
            "difficulty_type": "value", "clustering_type": "single_cluster",
            "min_difficulty": 80, "max_difficulty": 2048, "schedule_type": "fixed_root",
            "schedule_config": {"total_curriculum_step": 100, "difficulty_step": 8,
                                "root_degree": 2}}}}},
    "data_routing": {"enabled": False, "random_ltd": {
        "enabled": False, "total_layer_num": 24, "random_ltd_layer_num": 22,
        "random_ltd_layer_id": [1, 2], "model_mask_name": "attention_mask",
        "model_type": "decoder", "hidden_state_order": "seq_batch_dim",
        "random_ltd_schedule": {"min_value": 128, "max_value": 2048,
                                "schedule_type": "fixed_linear",
                                "schedule_config": {"require_steps": 200, "seq_per_step": 16}},
        "layer_token_lr_schedule": {"enabled": False}}}}  # fmt: skip


def _curriculum_with(path: tuple, value) -> dict:
    data = json.loads(json.dumps(CURRICULUM))
    node = data
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return {"data_efficiency": data}


def test_data_efficiency_turned_off_passes_with_every_key_deepspeed_documents():
    assert deepspeed_json_problem({"data_efficiency": CURRICULUM}) is None


@pytest.mark.parametrize(
    ("path", "meant"),
    [
        (("data_sampling", "num_epoch"), "data_efficiency.data_sampling.num_epochs"),
        (("data_sampling", "curriculum_learning", "curriculum_metrics", "seqlen",
          "min_dificulty"), "data_efficiency.data_sampling.curriculum_learning."
         "curriculum_metrics.seqlen.min_difficulty"),
        (("data_sampling", "curriculum_learning", "curriculum_metrics", "seqlen",
          "schedule_config", "root_degre"), "data_efficiency.data_sampling.curriculum_learning."
         "curriculum_metrics.seqlen.schedule_config.root_degree"),
        (("data_routing", "random_ltd", "random_ltd_schedule", "max_valu"),
         "data_efficiency.data_routing.random_ltd.random_ltd_schedule.max_value"),
        (("data_sampling", "dynamic_batching"), None),
    ],
)  # fmt: skip
def test_data_efficiency_keys_are_checked_at_every_depth(path, meant):
    if meant is None:  # a whole section DeepSpeed knows: its keys checked too
        data = _curriculum_with(path, {"enabled": False, "max_tokns": 4096})
        path, meant = (
            (*path, "max_tokns"),
            "data_efficiency.data_sampling.dynamic_batching.max_tokens",
        )
    else:
        data = _curriculum_with(path, 1)
    assert deepspeed_json_problem(data) == (
        ("data_efficiency", *path),
        f"unknown key (did you mean {meant}?): DeepSpeed 0.19.8 has no such setting",
    )


@pytest.mark.parametrize(
    "path",
    [("enabled",), ("data_sampling", "enabled"),
     ("data_sampling", "curriculum_learning", "enabled"),
     ("data_routing", "random_ltd", "enabled")],
)  # fmt: skip
def test_a_data_pipeline_turned_on_is_refused_saying_why(tmp_path, capsys, path):
    text, err = _launch(tmp_path, capsys, _curriculum_with(path, True))
    assert len(err) == 1, err
    assert f"data_efficiency.{'.'.join(path)}: DeepSpeed's data pipeline" in err[0]
    assert "the trainer plans and packs its own batches" in err[0]
    assert f"{tmp_path / 'ds.json'}:" in err[0]
