"""What build-data takes from a real model's replies: a fence cut at the token limit is counted as
such, and a reply that is code without a fence is that code.

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


# Replies SmolLM2-135M wrote under build-data (--max-new-tokens 128): 5 of 7 rejected replies
# were the code itself with no opening fence, some with a closing one and prose after it.
UNFENCED = (
    "def any_less_than_8(nums: list[int]) -> bool:\n"
    '    """Return True if at least one number in nums is less than 8."""\n'
    "    return any(num <= 8 for num in nums)\n\n"
    "# Test the function\nassert any_less_than_8([11, 4, 5]) == True\n"
)


@pytest.mark.parametrize(
    "tail", ["", "```\n\nThis function uses a generator expression to filter the input list."]
)
def test_a_reply_that_is_code_without_a_fence_is_that_code(tail):
    draft = split_reply(UNFENCED + tail)
    assert draft.code == UNFENCED.strip() + "\n" and draft.text == ""


@pytest.mark.parametrize(
    ("reply", "why"),
    [
        (UNFENCED + "assert any_less_than_8([1, 2", "unfenced code that does not compile"),
        ("import this is not python", "unfenced code that does not compile"),
        ("Here is why it failed: the loop stops early.", "no python code fence"),
    ],
)
def test_unfenced_text_that_is_not_code_is_still_refused(reply, why):
    with pytest.raises(ValueError, match=f"reply: {why}"):
        split_reply(reply)
