"""heads: Gemma 2 (and any model with ``final_logit_softcapping`` / ``attn_logit_softcapping``)
trains on its own loss: the loss module hands the fused loss the model's final-logit cap
(``model_support.final_logit_softcap``: logits c tanh(W h / c)), and the packed attention
applies the ``softcap`` the model's attention passes (scores c tanh(s / c)). Both were refused.
Checked on a tiny saved-and-loaded Gemma 2 whose caps bind, in float64: the packed loss (CE and
KL), the teacher-CE logging pass and every gradient equal those of the model's own unpacked
forward, segment by segment; a cap that is not a number > 0 is refused in one line."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import transformers as tf
from test_heads_logit_scale import SIZES, _batch, _unpacked_loss, assert_packed_equals_unpacked

from reflectioncoder.model import load_model, prepare_model, set_attention_backend
from reflectioncoder.model_support import check_supported, final_logit_softcap
from reflectioncoder.testing.archsweep import REFERENCE_ATTN, _register_reference
from reflectioncoder.train.loss_module import ReflectionLossModule

# Caps that bind at a tiny model's scores and logits (Gemma 2's released 50 and 30 bind at a
# trained model's, tens of times larger than a fresh tiny one's).
CAPS = dict(attn_logit_softcapping=0.05, final_logit_softcapping=0.2)


def _gemma2(folder, **caps) -> torch.nn.Module:
    torch.manual_seed(0)
    config = tf.Gemma2Config(**SIZES, head_dim=8, **caps)
    tf.Gemma2ForCausalLM(config).save_pretrained(folder)
    return prepare_model(load_model(folder, dtype=torch.float64))


def _reference(model, batch):
    _register_reference()  # float64 eager attention, soft-capped as transformers' Gemma 2 does
    model.set_attn_implementation(REFERENCE_ATTN)
    return _unpacked_loss(model, batch)


def test_the_packed_loss_and_gradients_equal_the_models_own(tmp_path):
    model = _gemma2(tmp_path / "gemma2", **CAPS)
    check_supported(model, max_len=512)  # it was refused
    assert final_logit_softcap(model) == CAPS["final_logit_softcapping"]
    assert_packed_equals_unpacked(model, 1e-5)  # Gemma 2's RMSNorm runs in float32


def test_the_logging_pass_reads_the_capped_head_too(tmp_path):
    """The teacher-CE pass of a logging step: the teacher's CE under the model's own logits."""
    model = _gemma2(tmp_path / "gemma2", **CAPS)
    batch = _batch()
    with torch.no_grad():
        teacher_ce = ReflectionLossModule(model)(batch, split=True)[3]
        only_teacher = batch.ce_weight * ~batch.row_is_student
        want = _reference(model, dataclasses.replace(batch, ce_weight=only_teacher))[1]
    torch.testing.assert_close(teacher_ce, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("field", sorted(CAPS))
@pytest.mark.parametrize("value", [0.0, -30.0, float("inf")])
def test_a_cap_that_is_not_a_number_above_zero_is_refused(field, value):
    model = tf.Gemma2ForCausalLM(tf.Gemma2Config(**SIZES, head_dim=8, **{field: value}))
    with pytest.raises(ValueError, match=rf"^model: Gemma2Config\.{field} = .*finite number > 0"):
        check_supported(model)


def test_an_attention_backend_without_a_cap_is_refused_at_the_start():
    """model.attention = torch_varlen (its kernel has no soft cap) on a capped model: one line
    when the model is prepared, before any step (``auto`` passes it by)."""
    model = tf.Gemma2ForCausalLM(tf.Gemma2Config(**SIZES, head_dim=8))
    with pytest.raises(ValueError, match=r"^model\.attention: 'torch_varlen' does not run here: "
                       r"it applies no attention-score soft cap"):  # fmt: skip
        set_attention_backend(model, "torch_varlen")
    set_attention_backend(model, "sdpa")
