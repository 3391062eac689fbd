"""A model that wraps a language model (Gemma 3's image-text checkpoints, 4B and up: a
``Gemma3Config`` whose ``text_config`` soft-caps the logits) keeps the soft-capping in its
``text_config``: ``check_supported`` read the outer config alone and let it through, to fail
later inside ``prepare_model`` with an AttributeError. The text config is checked too."""

from __future__ import annotations

import pytest
import torch
import transformers as tf

from reflectioncoder.model import check_supported

TEXT = dict(
    vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
    num_attention_heads=2, num_key_value_heads=1, head_dim=16,
)  # fmt: skip
VISION = dict(
    hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
    image_size=28, patch_size=14,
)  # fmt: skip


def _image_text_model(**text):
    torch.manual_seed(0)
    config = tf.Gemma3Config(text_config={**TEXT, **text}, vision_config=VISION)
    return tf.Gemma3ForConditionalGeneration(config)


def test_a_capped_text_config_is_refused():
    """The final cap of a wrapped language model (its wrapper's head may not apply it: Gemma 3's
    does not); an attention cap there is the attention's own, applied (softcap, below)."""
    capped = {"final_logit_softcapping": 30.0, "attn_logit_softcapping": None}
    field = "final_logit_softcapping"
    with pytest.raises(ValueError, match=rf"^model: Gemma3Config\.text_config\.{field} = 30\.0 "):
        check_supported(_image_text_model(**capped))


@pytest.mark.parametrize("attn_cap", [None, 50.0])
def test_an_uncapped_text_config_passes(attn_cap):
    """Its values pass (an attention cap too: the attention applies the softcap its layers
    pass), and so does its layout: the decoder layers sit in its language model
    (reflectioncoder/decoder_layout.py finds them there)."""
    model = _image_text_model(final_logit_softcapping=None, attn_logit_softcapping=attn_cap)
    check_supported(model)
