"""Fused q/k/v and gate/up projections (``model.fused_projections``): the packed loss and every
gradient equal the unfused model's (fp32; and under bf16 autocast to bf16 precision), Hugging
Face's logits too (biases, GQA); the weights of a model loaded from disk are read in place (no
copy per call) and it saves back bit for bit under Hugging Face's names; the trainer's losses
are the unfused trainer's; and ZeRO-3 is refused naming the field (compiled fused layers:
tests/test_compile.py)."""

from __future__ import annotations

import copy

import pytest
import torch
from safetensors.torch import load_file
from test_gradient_checkpointing import save_tiny_model
from test_packed_rows import _batches
from test_trainer import tiny_config

from reflectioncoder.errors import ConfigError
from reflectioncoder.fused_projections import GroupHead, GroupMember, fuse_projections, joined
from reflectioncoder.model import build_tiny_llama, load_model, prepare_model
from reflectioncoder.testing.toy_jsonl import write_toy_jsonl
from reflectioncoder.train.checkpoint import save_hf_model
from reflectioncoder.train.loss_module import ReflectionLossModule
from reflectioncoder.train.trainer import Trainer


def _grads_close(fused, plain, **tol) -> None:
    named = dict(plain.named_parameters())
    assert named.keys() == dict(fused.named_parameters()).keys()  # Hugging Face's names
    for name, p in fused.named_parameters():
        torch.testing.assert_close(p.grad, named[name].grad, **tol, msg=name)


@pytest.mark.parametrize("autocast", [False, True], ids=["fp32", "bf16-autocast"])
def test_packed_loss_and_gradients_equal_the_unfused_model(seed, autocast):
    plain = build_tiny_llama(300, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                             seed=seed)  # fmt: skip
    prepare_model(plain, liger=False)
    fused = copy.deepcopy(plain)
    prepare_model(fused, liger=False, fused_projections=True)
    assert sum(isinstance(m, GroupHead) for m in fused.modules()) == 4  # 2 layers x 2 groups
    dtype = torch.bfloat16 if autocast else None
    for batch in _batches(seed)[1][:2]:
        got = ReflectionLossModule(fused, dtype)(batch)[0]
        want = ReflectionLossModule(plain, dtype)(batch)[0]
        got.backward()
        want.backward()
        rtol = 1e-2 if autocast else 1e-6
        torch.testing.assert_close(got, want, rtol=rtol, atol=0.0)
    # fp32: sums in another order; bf16: the fused dx sums in fp32 where autograd adds bf16s
    _grads_close(fused, plain, **({"rtol": 2e-2, "atol": 1e-3} if autocast else {}))


def test_logits_with_biases_equal_the_unfused_model(seed):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=100, hidden_size=64, intermediate_size=96,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         attention_bias=True, mlp_bias=True)  # fmt: skip
    config._attn_implementation = "sdpa"
    plain = LlamaForCausalLM(config)
    fused = copy.deepcopy(plain)
    assert fuse_projections(fused) == 4
    ids = torch.randint(0, 100, (2, 23))
    got, want = fused(ids).logits, plain(ids).logits
    torch.testing.assert_close(got, want)
    got.square().mean().backward()
    want.square().mean().backward()
    _grads_close(fused, plain)


def test_a_model_from_disk_is_read_in_place_and_saves_back_bit_exact(tmp_path, seed):
    data = write_toy_jsonl(tmp_path / "toy.jsonl", 6, seed=seed)
    save_tiny_model(tmp_path / "model", data.read_text().splitlines(), seed)
    model = load_model(tmp_path / "model")
    prepare_model(model, liger=False, fused_projections=True)
    attn, mlp = model.model.layers[0].self_attn, model.model.layers[0].mlp
    assert isinstance(attn.k_proj, GroupMember) and isinstance(mlp.up_proj, GroupMember)
    for group in ([attn.q_proj, attn.k_proj, attn.v_proj], [mlp.gate_proj, mlp.up_proj]):
        whole = joined([layer.weight for layer in group])
        assert whole.data_ptr() == group[0].weight.data_ptr()  # the weights where they lie
        assert whole.shape[0] == sum(layer.out_features for layer in group)

    save_hf_model(model, None, model.state_dict(), tmp_path / "saved")
    before = load_file(str(tmp_path / "model" / "model.safetensors"))
    after = load_file(str(tmp_path / "saved" / "model.safetensors"))
    assert before.keys() == after.keys()
    assert any(k.endswith("k_proj.weight") for k in after)
    for key, value in before.items():
        assert torch.equal(after[key], value), key
    again = load_model(tmp_path / "saved")
    for (name, p), q in zip(again.named_parameters(), model.parameters(), strict=True):
        assert torch.equal(p, q), name


def test_trainer_with_fused_projections_logs_the_unfused_losses(tmp_path, seed):
    losses = {}
    for fused in (False, True):
        extra = (f"model.fused_projections={str(fused).lower()}", "train.epochs=2")
        trainer = Trainer(tiny_config(tmp_path / str(fused), seed, n=8, extra=extra))
        try:
            losses[fused] = [trainer.train_step()["loss"] for _ in range(3)]
        finally:
            trainer.close()
    assert losses[True] == pytest.approx(losses[False], rel=1e-5)


def test_zero3_is_refused_naming_the_field(tmp_path, seed, monkeypatch):
    from reflectioncoder.train import distributed

    # DeepSpeed's process group of one is not started: the check reads the layout only.
    one_deepspeed_rank = distributed.DistInfo(0, 1, 0, torch.device("cpu"), deepspeed=True)
    monkeypatch.setattr(distributed, "setup", lambda *args: one_deepspeed_rank)
    extra = ("model.fused_projections=true", "distributed.backend=deepspeed",
             "distributed.zero_stage=3")  # fmt: skip
    with pytest.raises(ConfigError, match="model.fused_projections: not with ZeRO-3"):
        Trainer(tiny_config(tmp_path, seed, n=4, extra=extra))
