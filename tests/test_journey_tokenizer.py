"""``model.tokenizer`` naming another model's tokenizer: one line naming the tokenizer, its size
and the model's rows (exit 1), before the weights load and before the run folder exists; a
tokenizer that fits the model still trains."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from reflectioncoder.cli import main
from reflectioncoder.model import build_tiny_llama
from reflectioncoder.testing.cli import ONE_STEP, train_argv
from reflectioncoder.testing.toy_jsonl import write_toy_jsonl
from reflectioncoder.tokenizer import train_tokenizer


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("mismatch")
    data = write_toy_jsonl(root / "data.jsonl", 2, seed=0)
    text = [data.read_text()]
    model = root / "model"  # a model of 300 rows, saved as a user's checkpoint
    train_tokenizer(text, 300, model)
    build_tiny_llama(
        300, hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1
    ).save_pretrained(model)
    big = train_tokenizer(text, 400, root / "big-tok")  # another model's: more than 300 tokens
    assert big.vocab_size > 300
    train_tokenizer(text, 290, root / "small-tok")  # fits the model's rows
    return root


def _train(root, tokenizer, out):
    model = {"model.name_or_path": root / "model", "model.tokenizer": tokenizer}
    sets = {"data.files": f"[{root / 'data.jsonl'}]", "checkpoint.out_dir": out, **model}
    return main(train_argv({**sets, **ONE_STEP}, "--no-progress"))


def test_another_models_tokenizer_is_refused_in_one_line(inputs, tmp_path, capsys):
    out = tmp_path / "run"
    assert _train(inputs, inputs / "big-tok", out) == 1
    err = capsys.readouterr().err
    size = AutoTokenizer.from_pretrained(inputs / "big-tok").vocab_size
    assert err == (
        f"reflectioncoder train: {inputs / 'big-tok'}: model.tokenizer: {size} tokens, but the "
        f"model {inputs / 'model'} has 300 embedding rows: not this model's tokenizer (leave "
        "model.tokenizer unset to use the model's own)\n"
    )
    assert not out.exists()


def test_a_tokenizer_that_fits_the_model_trains(inputs, tmp_path, capsys):
    out = tmp_path / "run"
    assert _train(inputs, inputs / "small-tok", out) == 0, capsys.readouterr().err
    assert (out / "final" / "config.json").is_file()
