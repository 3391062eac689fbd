"""moe: the FLOP count (MFU / HFU) of a mixture-of-experts model counts the routed experts a
token runs through (top-k of them), not all of them: every routed expert's weights were counted
as if each token ran through them: Mixtral-8x7B (top-2 of 8) counted 46.4B body parameters per
token, 3.7x the 12.6B it runs, and its MFU read that much too high. Shared
experts, the router and the dense layers (DeepSeek's first_k_dense_replace) see every token."""

from __future__ import annotations

import pytest
import torch
import transformers as tf
from test_flops import _batch
from torch.utils.flop_counter import FlopCounterMode

from reflectioncoder.model import load_model, prepare_model
from reflectioncoder.train.flops import ModelShape, batch_flops, recomputed_share
from reflectioncoder.train.loss_module import ReflectionLossModule

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
    # the MLPs' GEMMs that checkpointing reruns: the routed experts' top-k share too, and
    # neither a dense MLP's down_proj nor DeepSeek's shared experts' (each its layer's last)
    mlps = [layer.mlp for layer in model.model.layers]
    every_mlp_param = sum(p.numel() for mlp in mlps for p in mlp.parameters())
    dense_down = sum(mlp.down_proj.weight.numel() for mlp in mlps if hasattr(mlp, "down_proj"))
    shared_down = sum(
        mlp.shared_experts.down_proj.weight.numel()
        for mlp in mlps
        if hasattr(mlp, "shared_experts")
    )
    active = routed * TOP_K // EXPERTS
    last = dense_down + shared_down
    assert shape.mlp_in_params == every_mlp_param - last - routed + active


def test_a_dense_model_counts_as_before():
    model = tf.LlamaForCausalLM(tf.LlamaConfig(**SIZES))
    every_param = sum(p.numel() for p in model.parameters()) - 2 * 64 * D
    assert ModelShape.from_model(model).body_params == every_param


# What checkpointing runs again of one MoE layer's GEMMs, by hand (D = 32, I the routed
# experts' width, Is a shared expert's, top-2 of 4 experts; attention and norms are taken from
# the modules): torch's non-reentrant checkpoint stops its recompute once every tensor the
# backward saved is back (early stop), which skips only the GEMM whose output feeds nothing but
# adds: a routed expert's down projection runs again (the router's weight multiplies its output,
# and that product's backward reads it), Qwen2-MoE's shared expert's too (a sigmoid gate
# multiplies it), DeepSeek's shared experts' down projection does not (added last).
HAND = {  # name: (MoE layer's mlp_rerun GEMM params, its full ones but attention and norms)
    "mixtral": (EXPERTS * D + TOP_K * 3 * D * 64,) * 2,
    "qwen2_moe": (
        EXPERTS * D + TOP_K * 3 * D * 16 + 3 * D * 24 + D,  # router, experts, shared + its gate
    )
    * 2,
    "deepseek_v3": (  # router, experts, shared experts' gate / up
        EXPERTS * D + TOP_K * 3 * D * 16 + 2 * D * 16,
    )
    * 2,
}
DENSE_IN = 2 * D * 64  # DeepSeek's first, dense layer: gate and up (its down_proj is last)


@pytest.mark.parametrize("name", CASES)
def test_checkpointing_reruns_what_a_hand_count_says(name, tmp_path, seed):
    """``recomputed_params`` (``full``) and ``mlp_in_params`` (``mlp_rerun``) by hand, then
    what a FLOP counter sees run again with each policy, transformers' default grouped GEMM of
    experts included (``save_gemms`` keeps its outputs: nothing but element-wise ops again)."""
    config_cls, model_cls, experts, _, moe_layers = CASES[name]
    torch.manual_seed(0)
    model_cls(config_cls(**SIZES, **experts, num_experts_per_tok=TOP_K)).save_pretrained(tmp_path)
    model = load_model(tmp_path)
    assert model.config._experts_implementation == "grouped_mm"
    shape = ModelShape.from_model(model)
    layers = model.model.layers
    dense = [layer for layer in layers if hasattr(layer.mlp, "down_proj")]
    assert len(layers) - len(dense) == moe_layers
    outside_mlp = sum(
        p.numel() for layer in layers for n, p in layer.named_parameters() if ".mlp." not in f".{n}"
    )
    mlp_in, mlp_full = HAND[name]
    assert shape.mlp_in_params == moe_layers * mlp_in + len(dense) * DENSE_IN
    assert shape.recomputed_params == outside_mlp + moe_layers * mlp_full + len(dense) * DENSE_IN

    batch = _batch(seed, SIZES["vocab_size"])
    counted = {}
    for policy in (None, "full", "mlp_rerun", "save_gemms"):
        prepare_model(model, gradient_checkpointing=policy is not None,
                      checkpointing_policy=policy or "full")  # fmt: skip
        with FlopCounterMode(display=False) as counter:
            loss, *_ = ReflectionLossModule(model)(batch)
            loss.backward()
        counted[policy] = counter.get_total_flops()
        plan = getattr(model, "rc_checkpointing_plan", ())
        flops = batch_flops(shape, batch, recomputed_share(plan))
        # norm weights, biases: parameters the count takes as GEMMs' (< 1% of the rerun here)
        rerun = counted[policy] - counted[None]
        assert rerun == pytest.approx(flops.hardware - flops.model, rel=0.01, abs=0), policy
