"""Local generation ends at any of the model's end tokens, and none of them is in the text.

A model's ``generation_config`` may list several end tokens (Llama-3 Instruct: end_of_text,
eom, eot) where the tokenizer names one ``eos_token``. Generation stopped at the others, but
only the tokenizer's eos and the pad token were taken out of the text: the completion kept the
end token's text (``def f(): ...<|eom|>``), a SyntaxError when scored."""

from __future__ import annotations

from pathlib import Path

import pytest

from reflectioncoder import generate as gn
from reflectioncoder.testing.tiny_model import save_tiny_model

PROMPT = "def add(x, y):"


@pytest.fixture(scope="module")
def model_ending_with_eom(tmp_path_factory) -> Path:
    """A tiny model whose first greedy token after ``PROMPT`` is ``<|eom|>``, an end token of
    its generation config but not the tokenizer's eos."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    texts = ["def add(x, y):\n    return x + y\n", "Write a complete Python function."] * 20
    out = save_tiny_model(tmp_path_factory.mktemp("eom"), texts, special_tokens=["<|eom|>"])
    tok = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out)
    eom = tok.convert_tokens_to_ids("<|eom|>")
    with torch.no_grad():
        first = int(model.generate(**tok([PROMPT], return_tensors="pt"), max_new_tokens=1)[0, -1])
        head = model.get_output_embeddings().weight
        head[eom] = 10 * head[first]  # eom's logit: 10x the greedy token's (its best, > 0)
    model.generation_config.eos_token_id = [tok.eos_token_id, eom]
    model.save_pretrained(out)
    assert tok.eos_token_id != eom
    return out


def test_the_models_other_end_token_is_not_text(model_ending_with_eom) -> None:
    model = gn.LocalModel(str(model_ending_with_eom), device="cpu")
    for skip in (False, True):
        config = gn.GenerationConfig(max_new_tokens=6, skip_special_tokens=skip)
        stats: dict = {}
        texts = model.complete([PROMPT, "Write"], config, stats=stats)
        assert texts[0] == [""], texts  # it ended at once, at <|eom|>
        assert "<|eom|>" not in texts[1][0]
        assert stats["new_tokens"] >= 1
