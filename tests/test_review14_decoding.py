"""Local generation decodes with our settings alone, whatever the model's saved
``generation_config.json`` holds.

transformers fills every decoding field a call leaves unset from the model's saved generation
config: Qwen2.5-Coder-Instruct ships ``repetition_penalty`` 1.05 and ``top_k`` 20, so a model
fine-tuned from it was evaluated "greedy" with a repetition penalty, and sampled with top-k."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from reflectioncoder import generate as gn
from reflectioncoder.testing.tiny_model import save_tiny_model

PROMPT = "def add(x, y):"
STEPS = 40


@pytest.fixture(scope="module")
def plain_model(tmp_path_factory) -> Path:
    texts = ["def add(x, y):\n    return x + y\n", "Write a complete Python function."] * 20
    return save_tiny_model(tmp_path_factory.mktemp("plain"), texts, num_layers=2)


def _with_saved_defaults(plain: Path, out: Path, **defaults) -> Path:
    from transformers import GenerationConfig

    shutil.copytree(plain, out)
    saved = GenerationConfig.from_pretrained(out)
    saved.update(**defaults)
    saved.save_pretrained(out)
    return out


def _argmax_tokens(model_dir: Path) -> list[int]:
    """Greedy decoding by hand: the argmax of each step's logits."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    ids = tok(PROMPT, return_tensors="pt")["input_ids"]
    start = ids.shape[1]
    with torch.no_grad():
        for _ in range(STEPS):
            ids = torch.cat([ids, model(ids).logits[:, -1].argmax(-1, keepdim=True)], 1)
    return ids[0, start:].tolist()


def test_greedy_ignores_a_saved_repetition_penalty(plain_model, tmp_path) -> None:
    from transformers import AutoTokenizer

    model_dir = _with_saved_defaults(
        plain_model, tmp_path / "penalised", repetition_penalty=5.0, no_repeat_ngram_size=1
    )
    want = _argmax_tokens(plain_model)
    assert len(set(want)) < len(want)  # it repeats itself: a penalty would change it
    model = gn.LocalModel(str(model_dir), device="cpu")
    config = gn.GenerationConfig(max_new_tokens=STEPS, stop=())
    text = model.complete([PROMPT], config)[0][0]
    tok = AutoTokenizer.from_pretrained(model_dir)
    ends = {tok.eos_token_id, tok.pad_token_id}
    cut = next((j for j, t in enumerate(want) if t in ends), len(want))
    assert text == tok.decode(want[:cut])


def test_sampling_ignores_a_saved_top_k(plain_model, tmp_path, seed) -> None:
    model_dir = _with_saved_defaults(plain_model, tmp_path / "top1", top_k=1, do_sample=True)
    model = gn.LocalModel(str(model_dir), device="cpu")
    config = gn.GenerationConfig(max_new_tokens=8, temperature=1.5, n=6, seed=seed, stop=())
    texts = model.complete([PROMPT], config)[0]
    assert len(set(texts)) > 1, texts  # top_k 1 would make every sample the greedy one
