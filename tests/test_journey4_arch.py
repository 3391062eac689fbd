"""A misspelt or impossible `model.arch` (the demo's Llama built from scratch) is refused when the
config is read, naming `model.arch.FIELD` and where it was given: a misspelt key was an internal
TypeError, a bad size a bare 'num_heads: ...' once the tokenizer was trained and the data read."""

from __future__ import annotations

import pytest

from reflectioncoder.cli import main


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("model.arch.num_layer=3", "--set model.arch.num_layer=3: model.arch.num_layer: unknown "
         "field (did you mean model.arch.num_layers?); known: hidden_size, num_layers, "
         "num_heads, num_kv_heads, intermediate_size, max_position_embeddings, "
         "tie_word_embeddings, rope_theta"),
        ("model.arch.num_heads=0", "--set model.arch.num_heads=0: model.arch.num_heads: must be a "
         "positive integer, got 0"),
        ("model.arch.hidden_size=65", "--set model.arch.hidden_size=65: model.arch: hidden_size "
         "65 must divide by num_heads 4, which must divide by num_kv_heads 2"),
    ],
)  # fmt: skip
def test_a_bad_arch_is_refused_before_anything_runs(tmp_path, capsys, setting, message):
    out = tmp_path / "run"
    args = ["train", "--preset", "tiny", "--set", "data.files=[tests/data/reflection_small.jsonl]",
            "--set", f"checkpoint.out_dir={out}", "--set", setting]  # fmt: skip
    assert main(args) == 2
    assert capsys.readouterr().err == f"reflectioncoder train: {message}\n"
    assert not out.exists()
    assert main([*args, "--print-config"]) == 2  # the same check before any printing


def test_a_misspelt_arch_key_in_a_file_is_located(tmp_path, capsys):
    config = tmp_path / "my.yaml"
    config.write_text("preset: tiny\nmodel:\n  arch:\n    hidden_size: 32\n    num_layer: 3\n")
    assert main(["train", "--config", str(config), "--print-config"]) == 2
    assert capsys.readouterr().err.startswith(
        f"reflectioncoder train: {config}:5:5: model.arch.num_layer: unknown field"
    )
