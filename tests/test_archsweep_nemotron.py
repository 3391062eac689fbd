"""archsweep: Nemotron (Nemotron-4, Minitron) passed the start's checks, wrote the run folder and
stopped at the first step ('cu_seq_lens_q and max_length_q are required'): transformers'
NemotronDecoderLayer calls its attention without the arguments it is given, so the packed
segments never reached the varlen attention. ``prepare_model`` hooks them through; the packed
forward and its gradients equal each segment run alone (float64), with the layers recomputed in
the backward too."""

from __future__ import annotations

import pytest
import torch
import transformers as tf
from test_model import _packed, _per_segment_eager

from reflectioncoder.activation_checkpointing import set_checkpointing
from reflectioncoder.model import forward_hidden, prepare_model
from reflectioncoder.model_support import check_supported
from reflectioncoder.testing.archsweep import tiny_config


@pytest.mark.parametrize("checkpointing", [False, True])
def test_packed_forward_and_gradients_equal_each_segment_alone(seed, checkpointing):
    config, _ = tiny_config("nemotron", 64, {})
    model = tf.NemotronForCausalLM(config).double()
    check_supported(model, max_len=64)
    model = prepare_model(model)
    set_checkpointing(model, checkpointing)
    batch = _packed([16, 5, 11], 64)
    weights = torch.randn(32, 32, dtype=torch.float64)
    got = forward_hidden(model, batch)
    (got * weights).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    set_checkpointing(model, False)
    want = _per_segment_eager(model, batch)
    (want * weights).sum().backward()
    torch.testing.assert_close(got, want, atol=1e-9, rtol=1e-9)
    assert len(grads) > 20 and grads.keys() == {
        n for n, p in model.named_parameters() if p.grad is not None
    }
    for n, p in model.named_parameters():
        if n in grads:
            torch.testing.assert_close(grads[n], p.grad, atol=1e-9, rtol=1e-9, msg=n)
