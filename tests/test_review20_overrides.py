"""``model.config_overrides`` of a dict field (``rope_parameters``, ``rope_scaling``) sets the
keys it names and keeps the others, as a nested config's mapping does and as ``--set
model.config_overrides.rope_parameters.factor=4.0`` reads: replacing the whole dict dropped
``rope_type`` and ``rope_theta`` (the model's build then failed with a KeyError traceback, or a
model trained on another rope base)."""

from __future__ import annotations

from reflectioncoder.config_loader import load_config
from reflectioncoder.model_config import apply_config_overrides


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
