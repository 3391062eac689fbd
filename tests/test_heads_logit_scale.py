"""heads: a model whose head multiplies its logits by a constant of its config (Cohere's
``logit_scale``: logits = scale * W h; Granite's ``logits_scaling``: logits = W h / s) trains on
its own loss: the loss module feeds the fused loss (logits = W h) the hidden states times that
constant, exact since the logits are linear in h (model.LOGIT_SCALES, model.logit_scale). Such
configs were refused. Checked on tiny saved-and-loaded models in float64: the packed loss (CE
and KL) and every gradient equal those of the model's own unpacked forward, segment by segment.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
import transformers as tf
from reference.loss import _weighted_loss

from reflectioncoder.data.config import MaskConfig, PackingConfig
from reflectioncoder.data.packing import pack_rank, plan_step
from reflectioncoder.model import load_model, logit_scale, prepare_model
from reflectioncoder.model_support import check_supported
from reflectioncoder.testing.archsweep import REFERENCE_ATTN, _register_reference
from reflectioncoder.testing.synthetic import synthetic_samples
from reflectioncoder.train.loss_module import ReflectionLossModule

VOCAB = 300
SIZES = dict(
    vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
    num_attention_heads=4, num_key_value_heads=2,
)  # fmt: skip
# model type -> (config, model, the scale field's value, the constant the head multiplies by)
SCALED = {
    "cohere": (tf.CohereConfig, tf.CohereForCausalLM, {"logit_scale": 2.7}, 2.7),
    "granite": (tf.GraniteConfig, tf.GraniteForCausalLM, {"logits_scaling": 0.3}, 1 / 0.3),
}
GRAD_TOLERANCE = {"cohere": 1e-5, "granite": 1e-9}


def _loaded(name: str, folder) -> torch.nn.Module:
    config_cls, model_cls, field, _ = SCALED[name]
    torch.manual_seed(0)
    model_cls(config_cls(**SIZES, **field)).save_pretrained(folder)
    return load_model(folder, dtype=torch.float64)


def _batch():
    """A micro-batch of four synthetic samples (reflection and generation): CE and KL rows."""
    mask, packing = MaskConfig(), PackingConfig(max_tokens=4096)
    samples = synthetic_samples(
        4, vocab_size=VOCAB, seed=3, instruction=(5, 12), reflection=(10, 30),
        answer=(5, 12), generation_fraction=0.3,
    )  # fmt: skip
    (batch,) = pack_rank(plan_step(samples, 3, 10, mask, packing, 0), 0, mask, packing)
    assert batch.kl_pairs.shape[0] > 0 and (batch.targets != -100).any()
    return batch


def _unpacked_loss(model, batch):
    """SPEC §2's weighted CE + KL from the model's own forward of each segment alone (its own
    logits: its head's scale in them), float64 eager attention."""
    cu = batch.cu_seqlens.tolist()
    logits = []
    for a, b in zip(cu[:-1], cu[1:], strict=True):
        ids = batch.input_ids[a:b][None]
        out = model(input_ids=ids, position_ids=batch.position_ids[None, a:b],
                    attention_mask=torch.ones_like(ids), use_cache=False)  # fmt: skip
        logits.append(out.logits[0])
    rows = torch.cat(logits)[batch.loss_rows]
    return _weighted_loss(rows, batch.targets, batch.ce_weight, batch.kl_pairs, batch.kl_weight)


def _grads(model) -> dict[str, torch.Tensor]:
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return grads


def assert_packed_equals_unpacked(model, grad_share: float) -> dict[str, torch.Tensor]:
    """The packed loss (CE, KL) and every gradient equal the model's own unpacked forward's
    (float64 eager attention); gradients within ``grad_share`` of each one's largest entry (a
    norm that runs in float32 is 1e-7 of float64). Returns the packed gradients; the model is
    left on the reference attention."""
    batch = _batch()
    loss, ce, kl, _ = ReflectionLossModule(model)(batch)
    loss.backward()
    packed = _grads(model)
    _register_reference()
    model.set_attn_implementation(REFERENCE_ATTN)
    ref_loss, ref_ce, ref_kl = _unpacked_loss(model, batch)
    ref_loss.backward()
    reference = _grads(model)
    for got, want in ((loss, ref_loss), (ce, ref_ce), (kl, ref_kl)):
        torch.testing.assert_close(got, want.detach(), rtol=1e-10, atol=1e-12)
    assert sorted(packed) == sorted(reference)
    for key, want in reference.items():
        atol = grad_share * float(want.abs().max())
        torch.testing.assert_close(
            packed[key], want, rtol=0, atol=atol, msg=lambda m, k=key: f"{k}: {m}"
        )
    return packed


@pytest.mark.parametrize("name", sorted(SCALED))
def test_the_packed_loss_and_gradients_equal_the_models_own(name, tmp_path):
    model = prepare_model(_loaded(name, tmp_path / name))
    check_supported(model, max_len=512)  # it was refused
    assert logit_scale(model) == pytest.approx(SCALED[name][3])
    assert_packed_equals_unpacked(model, GRAD_TOLERANCE[name])  # Cohere's LayerNorm: float32


def test_the_logging_pass_reads_the_scaled_head_too(tmp_path):
    """The teacher-CE pass of a logging step: the teacher's CE under the model's own logits."""
    model = prepare_model(_loaded("granite", tmp_path / "granite"))
    batch = _batch()
    with torch.no_grad():
        teacher_ce = ReflectionLossModule(model)(batch, split=True)[3]
        _register_reference()
        model.set_attn_implementation(REFERENCE_ATTN)
        only_teacher = batch.ce_weight * ~batch.row_is_student
        want = _unpacked_loss(model, dataclasses.replace(batch, ce_weight=only_teacher))[1]
    torch.testing.assert_close(teacher_ce, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("value", [0.0, float("inf")])
def test_a_zero_or_infinite_scale_is_refused(value):
    with pytest.raises(ValueError, match=r"^model: GraniteConfig\.logits_scaling = .*finite"):
        check_supported(tf.GraniteForCausalLM(tf.GraniteConfig(**SIZES, logits_scaling=value)))
