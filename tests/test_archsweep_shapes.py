"""archsweep: models whose config has no global MLP width or head size passed the start's checks,
wrote the run folder and then stopped with a traceback, in the memory plan's and the FLOP count's
``ModelShape.from_model``: Solar Open, Kolibri and Ergo (experts in every layer: no
``intermediate_size``), Gemma 4 (its head sizes differ by layer: transformers refuses to read
``head_dim`` globally). The shape now reads the experts' widths a token runs through and the
largest layer's head size."""

from __future__ import annotations

import torch
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

from reflectioncoder.testing.archsweep import tiny_config
from reflectioncoder.train.flops import ModelShape


def _tiny(model_type: str):
    config, why = tiny_config(model_type, 64, {})
    assert why is None, why
    torch.manual_seed(0)
    return MODEL_FOR_CAUSAL_LM_MAPPING[type(config)](config)


def test_experts_only_mlp_width_is_the_experts_a_token_runs():
    config = _tiny("solar_open").config
    assert not hasattr(config, "intermediate_size")
    shape = ModelShape.from_model(_tiny("solar_open"))
    # top-2 routed experts and one shared expert, each 16 wide
    assert shape.intermediate == 16 * 2 + 16 * 1
    assert ModelShape.from_model(_tiny("kolibri1")).intermediate == 16 * 2 + 16


def test_per_layer_head_sizes_take_the_largest():
    model = _tiny("gemma4_text")
    config = model.config
    sizes = {layer.head_dim for layer in config.per_layer_config}
    shape = ModelShape.from_model(model)
    assert shape.attn_width == config.num_attention_heads * max(sizes)
    assert shape.intermediate == 64
