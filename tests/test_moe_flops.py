"""moe: the FLOP count (MFU / HFU) of a mixture-of-experts model counts the routed experts a
token runs through (top-k of them), not all of them: every routed expert's weights were counted
as if each token ran through them: Mixtral-8x7B (top-2 of 8) counted 46.4B body parameters per
token, 3.7x the 12.6B it runs, and its MFU read that much too high. Shared
experts, the router and the dense layers (DeepSeek's first_k_dense_replace) see every token."""

from __future__ import annotations

import pytest
import torch
import transformers as tf

from reflectioncoder.train.flops import ModelShape

D, LAYERS, EXPERTS, TOP_K = 32, 2, 4, 2
SIZES = dict(
    vocab_size=64, hidden_size=D, intermediate_size=64, num_hidden_layers=LAYERS,
    num_attention_heads=4, num_key_value_heads=2,
)  # fmt: skip
MLA = dict(kv_lora_rank=8, q_lora_rank=8, qk_rope_head_dim=4, qk_nope_head_dim=4, v_head_dim=8)
CASES = {  # config, model, its experts' fields, the routed experts' width, its MoE layers
    "mixtral": (tf.MixtralConfig, tf.MixtralForCausalLM, dict(num_local_experts=EXPERTS), 64, 2),
    "qwen2_moe": (
        tf.Qwen2MoeConfig, tf.Qwen2MoeForCausalLM,
        dict(num_experts=EXPERTS, moe_intermediate_size=16, shared_expert_intermediate_size=24),
        16, 2,
    ),
    "deepseek_v3": (
        tf.DeepseekV3Config, tf.DeepseekV3ForCausalLM,
        dict(n_routed_experts=EXPERTS, moe_intermediate_size=16, first_k_dense_replace=1,
             n_group=1, topk_group=1, **MLA),
        16, 1,
    ),
}  # fmt: skip


@pytest.mark.parametrize("name", CASES)
def test_routed_experts_count_top_k_of_them(name, tmp_path):
    config_cls, model_cls, experts, width, moe_layers = CASES[name]
    torch.manual_seed(0)
    config = config_cls(**SIZES, **experts, num_experts_per_tok=TOP_K)
    model_cls(config).save_pretrained(tmp_path)  # loaded back as users load it
    model = tf.AutoModelForCausalLM.from_pretrained(tmp_path)
    outside = model.get_input_embeddings().weight.numel() + model.lm_head.weight.numel()
    every_param = sum(p.numel() for p in model.parameters()) - outside
    routed = moe_layers * EXPERTS * 3 * D * width  # gate, up, down of each routed expert
    assert every_param > routed  # the routed experts are among the parameters
    shape = ModelShape.from_model(model)
    assert shape.body_params == every_param - routed + routed * TOP_K // EXPERTS
    # the MLPs' gate/up GEMMs that checkpointing reruns: the routed experts' top-k share too
    mlps = [layer.mlp for layer in model.model.layers]
    every_mlp_param = sum(p.numel() for mlp in mlps for p in mlp.parameters())
    dense_down = sum(mlp.down_proj.weight.numel() for mlp in mlps if hasattr(mlp, "down_proj"))
    active = routed * TOP_K // EXPERTS
    assert shape.mlp_in_params == every_mlp_param - dense_down - routed + active


def test_a_dense_model_counts_as_before():
    model = tf.LlamaForCausalLM(tf.LlamaConfig(**SIZES))
    every_param = sum(p.numel() for p in model.parameters()) - 2 * 64 * D
    assert ModelShape.from_model(model).body_params == every_param
