"""A model's reply cut at its token limit inside the code fence is counted as such.

SmolLM2-135M under `build-data --backend transformers --max-new-tokens 96` copied the problem's
docstring into its fence and ran out of tokens before closing it: 7 attempts were rejected as
`reply: no python code fence` although every reply held an opened ```python fence, which sent
the user looking at the prompt instead of at --max-new-tokens."""

from __future__ import annotations

import pytest

from reflectioncoder.construct import build_dataset, generate_problems
from reflectioncoder.construct.backend import ChatBackend, split_reply


class _CutModel(ChatBackend):
    """Replies with the reference solution, its fence never closed (the token limit reached)."""

    name = "cut"

    def __init__(self, seed: int) -> None:
        self.by_instruction = {p.instruction(): p for p in generate_problems(seed)}

    def _chat(self, messages: list[dict]) -> str:
        problem = self.by_instruction[messages[1]["content"]]
        return f"```python\n{problem.solution}"


def test_a_cut_fence_is_named_as_cut():
    cut = r"code fence never closed \(cut short\? --max-new-tokens\)"
    with pytest.raises(ValueError, match=cut):
        split_reply("Sure:\n```python\ndef f(x):\n    return")
    with pytest.raises(ValueError, match="no python code fence"):
        split_reply("```bash\nls\n```\nno code")
    assert split_reply("```bash\nls\n```\n```python\nx = 1\n```").code == "x = 1\n"


def test_build_data_counts_cut_replies_by_their_cause():
    with pytest.raises(RuntimeError, match="code fence never closed"):
        build_dataset(1, 0, backend=_CutModel(0), generation_fraction=0)
