"""hidden7: a model whose config asks for attention dropout (StarCoder2's released configs say
``"attention_dropout": 0.1``) is refused in one line naming the field, before the run folder is
written. Packed attention applies no dropout: such a model started training, wrote
``config.yaml``, ``metrics.jsonl`` and ``tokenizer/`` into its run folder, then stopped at its
first step with 'reflectioncoder_varlen: attention dropout 0.1 is not supported', naming neither
the model nor the field to change. A model with 0.0 (every other config here) still trains."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import transformers as tf

from reflectioncoder.cli import main
from reflectioncoder.model_support import check_supported
from reflectioncoder.testing.cli import train_argv

DATA = Path(__file__).parent / "data" / "reflection_small.jsonl"
SIZES = dict(
    vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
    num_attention_heads=4, num_key_value_heads=2,
)  # fmt: skip


@pytest.mark.parametrize(
    "config_cls, model_cls",
    [
        (tf.LlamaConfig, tf.LlamaForCausalLM),
        (tf.Qwen2Config, tf.Qwen2ForCausalLM),
        (tf.Starcoder2Config, tf.Starcoder2ForCausalLM),
    ],
)
def test_attention_dropout_is_refused_naming_the_field(config_cls, model_cls):
    torch.manual_seed(0)
    model = model_cls(config_cls(**SIZES, attention_dropout=0.1))
    with pytest.raises(ValueError, match=rf"^model: {config_cls.__name__}\.attention_dropout = "):
        check_supported(model)
    with pytest.raises(ValueError, match=r"\(config.json or model.config_overrides\)"):
        check_supported(model)  # the value may be an override's, not the folder's
    check_supported(model_cls(config_cls(**SIZES, attention_dropout=0.0)))


def test_train_refuses_it_before_writing_the_run_folder(tmp_path, capsys):
    from reflectioncoder.testing.tiny_model import save_tiny_model

    folder = save_tiny_model(tmp_path / "model", DATA.read_text().splitlines())
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "attention_dropout": 0.1}))
    capsys.readouterr()  # the save's progress bars
    out = tmp_path / "run"
    sets = {"data.files": f"[{DATA}]", "model.name_or_path": folder, "train.max_steps": 1}
    args = train_argv({**sets, "checkpoint.out_dir": out}, "--no-progress")
    assert main(args) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "LlamaConfig.attention_dropout = 0.1" in err[0], err
    assert "config.json" in err[0], err
    assert not out.exists()
