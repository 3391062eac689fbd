"""``model.config_overrides`` of a dict field (``rope_parameters``, ``rope_scaling``) sets the
keys it names and keeps the others, as a nested config's mapping does and as ``--set
model.config_overrides.rope_parameters.factor=4.0`` reads: replacing the whole dict dropped
``rope_type`` and ``rope_theta`` (the model's build then failed with a KeyError traceback, or a
model trained on another rope base). One that resizes the weights of a model folder is refused in
one line naming it, as the start of a run checks them."""

from __future__ import annotations

import pytest

from reflectioncoder.config_loader import load_config
from reflectioncoder.errors import ConfigError
from reflectioncoder.model_config import apply_config_overrides, read_model_config


def test_a_dict_field_keeps_the_keys_not_named():
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=4, rope_theta=500000.0)  # fmt: skip
    sets = ["model.config_overrides.rope_parameters.rope_type=linear",
            "model.config_overrides.rope_parameters.factor=4.0"]  # fmt: skip
    overrides = load_config(None, sets, base="tiny").model.config_overrides
    apply_config_overrides(config, overrides)
    assert config.rope_parameters == {"rope_theta": 500000.0, "rope_type": "linear", "factor": 4.0}
    rotary = LlamaForCausalLM(config).model.rotary_emb
    assert rotary.rope_type == "linear" and rotary.attention_scaling == 1.0


def _folder(tmp_path, config):
    config.save_pretrained(tmp_path)
    return tmp_path


@pytest.mark.parametrize(
    "overrides, field",
    [
        ({"intermediate_size": 48}, "model.config_overrides.intermediate_size"),
        ({"num_hidden_layers": 2}, "model.config_overrides.num_hidden_layers"),
        ({"attention_dropout": 0.0, "vocab_size": 65}, "model.config_overrides.vocab_size"),
    ],
)  # fmt: skip
def test_an_override_that_resizes_the_weights_is_refused_naming_it(tmp_path, overrides, field):
    """The folder's weights are of its config.json's sizes: a resized config failed at load as
    "an internal error" (transformers' size mismatch) or, for the layer count, drew the missing
    layers at random; refused at the start, naming the override."""
    from transformers import Starcoder2Config

    sizes = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                 num_attention_heads=4, num_key_value_heads=2)  # fmt: skip
    folder = _folder(tmp_path, Starcoder2Config(**sizes))
    with pytest.raises(ConfigError) as err:
        read_model_config(folder, overrides)
    assert err.value.field == field, err.value.field
    assert "cannot resize" in err.value.message and "\n" not in err.value.message
    same = {k: v for k, v in overrides.items() if k == "attention_dropout"}
    assert read_model_config(folder, {**same, "intermediate_size": 64}).attention_dropout == 0.0


def test_a_resize_by_another_name_or_inside_a_nested_config_is_refused(tmp_path):
    from transformers import Gemma3Config, GPT2Config

    gpt2 = _folder(tmp_path / "gpt2", GPT2Config(n_embd=32, n_layer=1, n_head=4, vocab_size=64))
    with pytest.raises(ConfigError, match="GPT2Config.n_embd is 32") as err:
        read_model_config(gpt2, {"n_embd": 48})  # GPT-2's name of hidden_size
    assert err.value.field == "model.config_overrides.n_embd"
    with pytest.raises(ConfigError, match="GPT2Config.n_positions is 1024"):
        read_model_config(gpt2, {"n_positions": 2048})  # its learned position table's rows
    gemma3 = _folder(tmp_path / "gemma3", Gemma3Config())
    with pytest.raises(ConfigError) as err:
        read_model_config(gemma3, {"text_config": {"attention_dropout": 0.0, "hidden_size": 8}})
    assert err.value.field == "model.config_overrides.text_config.hidden_size"


def test_a_field_transformers_moved_into_a_dict_is_named_there():
    """Llama 3's config.json says ``"rope_theta": 500000.0``; transformers 5 keeps it in
    rope_parameters, and the refusal named no field to set instead."""
    from transformers import LlamaConfig

    config = LlamaConfig(rope_theta=500000.0)
    with pytest.raises(ConfigError) as err:
        apply_config_overrides(config, {"rope_theta": 1e6})
    assert "did you mean model.config_overrides.rope_parameters.rope_theta?" in err.value.message
    apply_config_overrides(config, {"rope_parameters": {"rope_theta": 1e6}})
    assert config.rope_parameters == {"rope_theta": 1e6, "rope_type": "default"}


def test_resume_refuses_a_gpt2_layout_model_of_other_shapes(tmp_path):
    """--resume compared the shapes by Llama's names (hidden_size, num_hidden_layers, ...),
    which a GPT-2-layout config.json (n_embd, n_layer, n_head) does not have: a checkpoint of
    another width or depth went on to load. ``WEIGHT_SHAPES`` by the config's own names."""
    from transformers import GPT2Config

    from reflectioncoder.errors import UserError
    from reflectioncoder.train.checkpoint import check_same_model

    GPT2Config(n_embd=32, n_layer=1, n_head=4, vocab_size=64).save_pretrained(tmp_path / "model")
    check_same_model(tmp_path, GPT2Config(n_embd=32, n_layer=1, n_head=4, vocab_size=64))
    with pytest.raises(UserError, match=r"n_embd 32 -> 48, n_layer 1 -> 2\)") as err:
        check_same_model(tmp_path, GPT2Config(n_embd=48, n_layer=2, n_head=4, vocab_size=64))
    assert err.value.field == "--resume"


def test_an_arch_models_sizes_are_set_in_model_arch_not_overridden():
    """A model built from model.arch: an override of a size arch sets bypassed arch's checks
    (num_attention_heads=5 with 2 kv heads failed at the first step, after the run folder was
    written, as "q, k: Hq=5 must be a multiple of Hkv=2", naming no field); refused when the
    config is read, naming arch's field. A model folder's other fields are unaffected."""
    with pytest.raises(ConfigError) as err:
        load_config(None, ["model.config_overrides.num_attention_heads=5"], base="tiny")
    assert err.value.field == "model.config_overrides.num_attention_heads"
    assert "model.arch.num_heads" in err.value.message
    sets = ["model.config_overrides.attention_dropout=0.0"]
    assert load_config(None, sets, base="tiny").model.config_overrides == {"attention_dropout": 0.0}
    sets = ["model.name_or_path=/models/x", "model.config_overrides.num_attention_heads=5"]
    assert load_config(None, sets, base="tiny").model.config_overrides  # checked on its folder
