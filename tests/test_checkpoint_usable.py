"""A saved checkpoint works with plain transformers: its chat template renders SPEC §5's prompt,
and generate() stops at the end token with no argument telling it which one."""

from __future__ import annotations

import json

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from reflectioncoder.chat_template import CHAT_TEMPLATE
from reflectioncoder.data.tokenize import END_OF_MESSAGE, add_special_tokens
from reflectioncoder.eval.prompts import humaneval_prompt
from reflectioncoder.eval.tasks import PythonTask
from reflectioncoder.model import add_special_token_embeddings, build_tiny_llama
from reflectioncoder.tokenizer import train_tokenizer
from reflectioncoder.train.checkpoint import save_hf_model

PROBLEM = 'def add(a: int, b: int) -> int:\n    """Return a + b."""\n'


def _saved_checkpoint(tmp_path, favourite: str):
    """A tiny Llama whose greedy next token is always ``favourite``, saved as the trainer does.

    Every embedding is the same vector along dimension 0 and the blocks add nothing, so the last
    hidden state points along dimension 0 and only ``favourite``'s LM-head row reads it.
    """
    texts = [PROBLEM, "def f(x):\n    return x + 1\n", "print('hello world')"] * 20
    tokenizer = train_tokenizer(texts, 300)
    model = build_tiny_llama(len(tokenizer), hidden_size=32, intermediate_size=48, seed=0)
    add_special_token_embeddings(model, tokenizer, add_special_tokens(tokenizer))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(("o_proj.weight", "down_proj.weight", "lm_head.weight")):
                param.zero_()
        embed = model.get_input_embeddings().weight
        embed.zero_()
        embed[:, 0] = 1.0
        model.lm_head.weight[tokenizer.convert_tokens_to_ids(favourite), 0] = 5.0
    path = tmp_path / "final"
    save_hf_model(model, tokenizer, model.state_dict(), path)
    return path


def _generate(path, max_new_tokens: int = 12) -> tuple[list[int], AutoTokenizer]:
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True).eval()
    user = f"Write a complete Python function for the problem.\n\n{PROBLEM.strip()}"
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": user}], add_generation_prompt=True, return_tensors="pt"
    )
    ids = ids["input_ids"] if not isinstance(ids, torch.Tensor) else ids
    out = model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False)
    return out[0, ids.shape[1] :].tolist(), tokenizer


def test_generate_stops_at_the_end_of_the_message(tmp_path):
    path = _saved_checkpoint(tmp_path, END_OF_MESSAGE)
    new, tokenizer = _generate(path)
    assert new == [tokenizer.convert_tokens_to_ids(END_OF_MESSAGE)]


def test_generate_stops_at_eos(tmp_path):
    path = _saved_checkpoint(tmp_path, "</s>")
    new, tokenizer = _generate(path)
    assert new == [tokenizer.eos_token_id]


def test_without_an_end_token_generation_runs_to_the_limit(tmp_path):
    """The control: the same model favouring a plain token does not stop early."""
    path = _saved_checkpoint(tmp_path, "<|code|>")
    new, _ = _generate(path, max_new_tokens=7)
    assert len(new) == 7


def test_configs_name_the_ids_and_the_template_renders_spec_section_5(tmp_path):
    path = _saved_checkpoint(tmp_path, END_OF_MESSAGE)
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    config = json.loads((path / "config.json").read_text())
    generation = json.loads((path / "generation_config.json").read_text())
    end = tokenizer.convert_tokens_to_ids(END_OF_MESSAGE)
    assert config["eos_token_id"] == tokenizer.eos_token_id is not None
    assert config["pad_token_id"] == tokenizer.pad_token_id is not None
    assert sorted(generation["eos_token_id"]) == sorted([tokenizer.eos_token_id, end])
    assert generation["pad_token_id"] == tokenizer.pad_token_id
    assert tokenizer.chat_template == CHAT_TEMPLATE

    task = PythonTask("HumanEval/0", PROBLEM, "add", "", [], [], 0.0, "humaneval")
    user = f"Write a complete Python function for the problem.\n\n{PROBLEM.strip()}"
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": user}], add_generation_prompt=True, tokenize=False
    )
    assert text + "```python\n" == tokenizer.bos_token + humaneval_prompt(task)
    blocks = [
        {"type": "text", "content": "Let me check."},
        {"type": "code", "content": "print(1)"},
        {"type": "execution", "content": "1"},
    ]
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}, {"role": "assistant", "content": blocks}],
        tokenize=False,
    )
    assert text == (
        "<s><|user|><|text|>hi<|endofblock|><|endofmessage|><|assistant|><|text|>Let me check."
        "<|endofblock|><|code|>print(1)<|endofblock|><|execution|>1<|endofblock|><|endofmessage|>"
    )
