"""``model.config_overrides``: fields of the model's Hugging Face config set from the run config
before the model is built, so a released checkpoint (StarCoder2's, whose config.json says
``"attention_dropout": 0.1``, residual and embedding dropout 0.1 too) trains without the user
editing the folder they downloaded. An override naming a field the config lacks, or a value of
another type, is refused in one line naming it, before anything is written; the refusal of
attention dropout names the ``--set`` that fixes it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from reflectioncoder.cli import main
from reflectioncoder.config import ModelConfig
from reflectioncoder.config_loader import load_config
from reflectioncoder.errors import ConfigError
from reflectioncoder.model_config import apply_config_overrides
from reflectioncoder.testing.cli import train_argv

DATA = Path(__file__).parent / "data" / "reflection_small.jsonl"
DROPOUTS = {"attention_dropout": 0.1, "residual_dropout": 0.1, "embedding_dropout": 0.1}
FIX = "--set model.config_overrides.attention_dropout=0.0"


def _starcoder2():
    from transformers import Starcoder2Config

    return Starcoder2Config(vocab_size=64, hidden_size=32, intermediate_size=64,
                            num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
                            **DROPOUTS)  # fmt: skip


def test_an_override_sets_the_field_in_its_type():
    config = _starcoder2()
    apply_config_overrides(config, {"attention_dropout": 0, "initializer_range": 1})
    assert config.attention_dropout == 0 and config.residual_dropout == 0.1
    assert config.initializer_range == 1.0 and isinstance(config.initializer_range, float)


@pytest.mark.parametrize(
    "overrides, field, reason",
    [
        ({"attention_droput": 0.0}, "model.config_overrides.attention_droput",
         "Starcoder2Config has no field 'attention_droput' (did you mean "
         "model.config_overrides.attention_dropout?)"),
        ({"attention_dropout": "none"}, "model.config_overrides.attention_dropout",
         "expected float | int (Starcoder2Config.attention_dropout is 0.1), got 'none'"),
        ({"use_cache": 1}, "model.config_overrides.use_cache", "expected bool"),
        ({"num_hidden_layers": 1.5}, "model.config_overrides.num_hidden_layers", "expected int"),
    ],
)  # fmt: skip
def test_a_bad_override_is_refused_naming_it_and_nothing_is_set(overrides, field, reason):
    config = _starcoder2()
    with pytest.raises(ConfigError) as err:
        apply_config_overrides(config, {"residual_dropout": 0.0, **overrides})
    assert err.value.field == field and err.value.message.startswith(reason), err.value.message
    assert config.residual_dropout == 0.1  # checked before any is set


def test_a_nested_config_takes_a_mapping():
    from transformers import Gemma3Config

    config = Gemma3Config()
    apply_config_overrides(config, {"text_config": {"attention_dropout": 0.0}})
    assert config.text_config.attention_dropout == 0.0
    with pytest.raises(ConfigError, match="Gemma3TextConfig has no field 'atention_dropout'"):
        apply_config_overrides(config, {"text_config": {"atention_dropout": 0.0}})
    with pytest.raises(ConfigError, match="expected a mapping of Gemma3TextConfig's fields"):
        apply_config_overrides(config, {"text_config": 0.0})


def test_the_run_config_reads_them_from_a_file_and_from_set(tmp_path):
    cfg = load_config(None, ["model.config_overrides.attention_dropout=0.0"], base="tiny")
    assert cfg.model.config_overrides == {"attention_dropout": 0.0}
    assert cfg.to_dict()["model"]["config_overrides"] == {"attention_dropout": 0.0}
    file = tmp_path / "run.yaml"
    file.write_text("preset: tiny\nmodel:\n  config_overrides: 0.1\n")
    with pytest.raises(ConfigError, match="expected a mapping") as err:
        load_config(file)
    assert (err.value.file, err.value.line) == (str(file), 3)
    with pytest.raises(ValueError, match="model.config_overrides: expected field names"):
        ModelConfig(arch={"hidden_size": 32}, config_overrides={1: 0.0})


def _run(tmp_path, capsys, folder, sets, *flags):
    capsys.readouterr()
    out = tmp_path / "run"
    base = {"data.files": f"[{DATA}]", "model.name_or_path": folder, "train.max_steps": 1,
            "checkpoint.out_dir": out, "checkpoint.save_every": 1}  # fmt: skip
    code = main(train_argv({**base, **sets}, "--no-progress", *flags))
    return code, capsys.readouterr().err.strip().splitlines(), out


@pytest.mark.slow  # two training starts and a resume through the CLI (~25 s on a busy CPU)
def test_a_released_starcoder2_trains_with_the_override(tmp_path, capsys, caplog):
    from reflectioncoder.testing.tiny_model import save_tiny_model

    folder = save_tiny_model(tmp_path / "starcoder2", DATA.read_text().splitlines(),
                             model_type="starcoder2", config_fields=DROPOUTS)  # fmt: skip
    code, err, out = _run(tmp_path, capsys, folder, {})
    assert code == 1 and len(err) == 1, err
    assert "Starcoder2Config.attention_dropout = 0.1" in err[0] and FIX in err[0], err
    assert not out.exists()

    code, err, out = _run(tmp_path, capsys, folder, {"model.config_overrides.atention_dropout": 0})
    assert code == 2 and len(err) == 1, err
    assert "model.config_overrides.atention_dropout" in err[0], err
    assert "did you mean model.config_overrides.attention_dropout?" in err[0], err
    assert not out.exists()

    code, err, out = _run(tmp_path, capsys, folder, {"model.config_overrides.attention_dropout": 0})
    assert code == 0, err
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["model"]["config_overrides"] == {"attention_dropout": 0}
    final = json.loads((out / "final" / "config.json").read_text())
    assert final["attention_dropout"] == 0 and final["residual_dropout"] == 0.1  # kept
    assert json.loads((folder / "config.json").read_text())["attention_dropout"] == 0.1

    # a resume that changes an override is told so, as any config change is
    sets = {"model.config_overrides": "{attention_dropout: 0, residual_dropout: 0}"}
    with caplog.at_level("INFO", logger="reflectioncoder.train"):
        code, err, out = _run(tmp_path, capsys, folder, sets, "--resume")
    assert code == 0, err
    assert "config changed from the run's: model.config_overrides.residual_dropout None -> 0" in (
        caplog.text
    )


def test_every_way_of_building_the_model_takes_them(tmp_path):
    """One process's load, the sharded engines' build without values (ZeRO-3 and FSDP share
    it) and a model built from ``model.arch``: each module is built from the overridden config."""
    import torch
    from transformers import AutoTokenizer

    from reflectioncoder.data.tokenize import add_special_tokens
    from reflectioncoder.model import build_tiny_llama, load_model
    from reflectioncoder.testing.tiny_model import save_tiny_model
    from reflectioncoder.train.fsdp_load import build_on_meta

    folder = save_tiny_model(tmp_path, DATA.read_text().splitlines(), model_type="starcoder2",
                             config_fields=DROPOUTS)  # fmt: skip
    overrides = {"attention_dropout": 0.0}
    loaded = load_model(folder, config_overrides=overrides)
    tok = AutoTokenizer.from_pretrained(folder)
    meta = build_on_meta(folder, tok, add_special_tokens(tok), torch.float32, overrides)
    for model in (loaded, meta):
        assert model.model.layers[0].self_attn.attention_dropout == 0.0
        assert model.config.residual_dropout == 0.1
    built = build_tiny_llama(300, config_overrides={"attention_dropout": 0.1})
    assert built.model.layers[0].self_attn.attention_dropout == 0.1
