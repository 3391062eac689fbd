"""`evaluate --model` with the default spec prompt on an instruct model that was not trained
here (its tokenizer has a chat template and none of SPEC §5's tokens, as SmolLM2-135M-Instruct)
says in one line that --prompt-format chat is its format: it scored near nothing silently
(issue 22: the prompt format right for an instruct model)."""

from __future__ import annotations

import pytest

from reflectioncoder.cli import main
from reflectioncoder.data.special import (
    ASSISTANT,
    CODE,
    END_OF_BLOCK,
    END_OF_MESSAGE,
    EXECUTION,
    TEXT,
    USER,
)
from reflectioncoder.testing.tiny_model import save_tiny_model

TEXTS = ["def add(x, y):\n    return x + y\n", "Write a complete Python function."] * 10
TEMPLATE = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}assistant: "
SPEC = (USER, ASSISTANT, TEXT, CODE, EXECUTION, END_OF_BLOCK, END_OF_MESSAGE)


@pytest.mark.slow
@pytest.mark.parametrize("trained_here", [False, True])
def test_spec_prompt_to_an_instruct_model_is_noted(trained_here, tmp_path, capsys):
    specials = SPEC if trained_here else ()
    model = save_tiny_model(tmp_path / "m", TEXTS, special_tokens=specials, chat_template=TEMPLATE)
    argv = ["evaluate", "--task", "mbpp", "--model", str(model), "--limit", "1",
            "--max-new-tokens", "4", "--device", "cpu", "--no-progress", "--base-only",
            "--json", str(tmp_path / "r.json")]  # fmt: skip
    assert main(argv) == 0
    notes = [line for line in capsys.readouterr().err.splitlines() if line.startswith("note:")]
    if trained_here:
        assert notes == []
    else:
        assert notes == [
            f"note: {model} has no {USER} token (not trained by reflectioncoder) but a chat "
            "template: an instruct model answers --prompt-format chat, not the default spec"
        ]
    assert main([*argv, "--prompt-format", "chat"]) == 0
    assert "note:" not in capsys.readouterr().err
