"""The tokenizer-against-model check (``train.load.check_tokenizer_fits``) on the configs the
journey test does not write: a composite model's config.json (its rows are its text config's:
the top level has no ``vocab_size``, and the check was silently skipped), and a model whose own
tokenizer does not fit it (the advice to leave model.tokenizer unset would change nothing)."""

from __future__ import annotations

import types

import pytest
from transformers import Gemma3Config

from reflectioncoder.errors import UserError
from reflectioncoder.tokenizer import train_tokenizer
from reflectioncoder.train.load import check_tokenizer_fits

TEXTS = ["def add(a, b):\n    return a + b\n" * 20, "print('hello world')\n" * 20]
ROWS = 200  # fewer than the tokenizer trained on TEXTS has


def _cfg(tokenizer):
    return types.SimpleNamespace(
        model=types.SimpleNamespace(tokenizer=tokenizer, config_overrides={})
    )


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    tokenizer = train_tokenizer(TEXTS, 400, tmp_path_factory.mktemp("tok") / "tok")
    assert tokenizer.vocab_size > ROWS
    return tokenizer


def test_a_composite_models_text_rows_are_checked(tmp_path, big):
    Gemma3Config(text_config={"vocab_size": ROWS}).save_pretrained(tmp_path)
    with pytest.raises(UserError) as err:
        check_tokenizer_fits(_cfg(str(tmp_path / "tok")), big, tmp_path)
    assert f"{big.vocab_size} tokens, but the model {tmp_path} has {ROWS} embedding rows" in str(
        err.value
    )


def test_the_models_own_tokenizer_gets_the_advice_that_applies(tmp_path, big):
    Gemma3Config(text_config={"vocab_size": ROWS}).save_pretrained(tmp_path)
    with pytest.raises(UserError) as err:
        check_tokenizer_fits(_cfg(None), big, tmp_path)
    message = str(err.value)
    assert "model.name_or_path" in message and "leave model.tokenizer unset" not in message
    assert "set model.tokenizer to the one it was trained with" in message
