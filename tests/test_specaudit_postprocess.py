"""SPEC §5's "special tokens removed", as the authors' script removes them (docs/evaluation.md):
the four block and message tokens go wherever they sit; a role or execution token the model
writes inside its code stays (so a score compares with the released completions')."""

import pytest

from reflectioncoder.eval.prompts import postprocess

REMOVED = ["<|text|>", "<|code|>", "<|endofblock|>", "<|endofmessage|>"]
KEPT = ["<|user|>", "<|assistant|>", "<|execution|>"]


@pytest.mark.parametrize("token", REMOVED)
def test_block_and_message_tokens_are_removed_anywhere(token):
    raw = f"def f(x):{token}\n    return {token}x + 1\n```\nDone."
    assert postprocess(raw) == "def f(x):\n    return x + 1"


@pytest.mark.parametrize("token", KEPT)
def test_role_and_execution_tokens_stay(token):
    raw = f"def f(x):\n    return x  # {token}\n```"
    assert postprocess(raw) == f"def f(x):\n    return x  # {token}"
