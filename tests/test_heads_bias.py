"""heads: an LM head with a bias (Phi-1 / 1.5 / 2: logits = W h + b) trains exactly: the loss
glue (``loss.reflection_loss(..., lm_head_bias=b)``) computes the logits as [W | b] [h; 1], so
every backend of the fused loss runs it and autograd hands back d W, d b and d h. Phi was
refused. Checked in float64 against the loss written from full logits (value, d W, d b, d h),
and on a tiny saved-and-loaded Phi against the model's own unpacked forward (loss, every
gradient)."""

from __future__ import annotations

import dataclasses
import types

import pytest
import torch
import transformers as tf
from reference.loss import _weighted_loss
from test_heads_logit_scale import SIZES, _batch, _unpacked_loss, assert_packed_equals_unpacked

from reflectioncoder.loss import reflection_loss
from reflectioncoder.model import lm_head_bias, load_model, prepare_model
from reflectioncoder.model_support import check_supported
from reflectioncoder.train.loss_module import ReflectionLossModule


def _rows(dtype):
    gen = torch.Generator().manual_seed(1)
    t, d, v = 12, 16, 40
    hidden = torch.randn(t, d, generator=gen, dtype=dtype, requires_grad=True)
    weight = torch.randn(v, d, generator=gen, dtype=dtype, requires_grad=True)
    bias = (3 * torch.randn(v, generator=gen, dtype=dtype)).requires_grad_()
    batch = types.SimpleNamespace(
        loss_rows=torch.tensor([0, 2, 3, 5, 7, 8, 11]),
        targets=torch.tensor([4, -100, 9, 33, 1, -100, 20]),
        ce_weight=torch.tensor([0.5, 0.0, 0.25, 1.0, 0.3, 0.0, 0.7]),
        kl_pairs=torch.tensor([[1, 4], [2, 6], [5, 3]]),
        kl_weight=torch.tensor([0.4, 0.2, 0.9]),
    )
    return hidden, weight, bias, batch


@pytest.mark.parametrize(
    ("backend", "dtype"), [("torch", torch.float64), ("triton", torch.float32)]
)
def test_the_loss_and_its_gradients_with_a_biased_head(backend, dtype):
    hidden, weight, bias, batch = _rows(dtype)
    loss, parts = reflection_loss(hidden, batch, weight, backend=backend, lm_head_bias=bias)
    loss.backward()
    got = [hidden.grad, weight.grad, bias.grad]

    h, w, b = (x.detach().double().requires_grad_() for x in (hidden, weight, bias))
    logits = h[batch.loss_rows] @ w.T + b
    want, ce, kl = _weighted_loss(logits, batch.targets, batch.ce_weight, batch.kl_pairs,
                                  batch.kl_weight)  # fmt: skip
    want.backward()
    tol = dict(rtol=1e-10, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-5)
    for g, r in ((loss, want), (parts["ce"], ce), (parts["kl"], kl)):
        torch.testing.assert_close(g.double(), r.detach(), **tol)
    for name, g, r in zip(("d h", "d W", "d b"), got, (h.grad, w.grad, b.grad), strict=True):
        torch.testing.assert_close(g.double(), r, **tol, msg=lambda m, n=name: f"{n}: {m}")
    assert b.grad.abs().max() > 0.1  # the bias gets a gradient worth checking


def test_a_tiny_phi_trains_on_its_own_loss(tmp_path):
    torch.manual_seed(0)
    phi = tf.PhiForCausalLM(tf.PhiConfig(**SIZES))
    with torch.no_grad():
        phi.lm_head.bias.normal_(0, 2.0)  # its initialisation zeroes it
    phi.save_pretrained(tmp_path / "phi")
    model = prepare_model(load_model(tmp_path / "phi", dtype=torch.float64))
    check_supported(model, max_len=512)  # it was refused
    assert lm_head_bias(model).abs().max() > 1
    batch = _batch()
    with torch.no_grad():  # the logging step's teacher-CE pass takes the bias too
        teacher_ce = ReflectionLossModule(model)(batch, split=True)[3]
    packed = assert_packed_equals_unpacked(model, 1e-9)  # leaves the reference attention on
    assert "lm_head.bias" in packed
    with torch.no_grad():
        teacher_rows = dataclasses.replace(batch, ce_weight=batch.ce_weight * ~batch.row_is_student)
        ref_ce = _unpacked_loss(model, batch)[1]
        ref_teacher_ce = _unpacked_loss(model, teacher_rows)[1]
    assert ref_teacher_ce > 0 and ref_teacher_ce < ref_ce
    torch.testing.assert_close(teacher_ce, ref_teacher_ce, rtol=1e-10, atol=1e-12)
