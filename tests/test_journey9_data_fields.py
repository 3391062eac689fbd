"""A training file's bad field, as users write one, is one line naming file, line and field in
the file's own terms: a key left out says `missing` (it said `unknown role None`, `expected a
string, got None`, as if the file held a null), a value is shown as JSON spells it (`null`,
not Python's `None`), a string, list or object by its kind (not the whole value)."""

from __future__ import annotations

import json

import pytest

from reflectioncoder.cli import main
from reflectioncoder.data.tokenize import add_special_tokens
from reflectioncoder.tokenizer import train_tokenizer

GOOD = {
    "type": "generation",
    "messages": [
        {"role": "user", "content": [{"type": "text", "content": "Add one."}]},
        {"role": "assistant", "content": [{"type": "code", "content": "x + 1"}]},
    ],
}


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    tok = train_tokenizer(["def f(x):\n    return x + 1\n", "Add one."] * 20, vocab_size=300)
    add_special_tokens(tok)
    out = tmp_path_factory.mktemp("tok")
    tok.save_pretrained(out)
    return out


def _without(path: tuple, key: str) -> dict:
    row = json.loads(json.dumps(GOOD))
    target = row
    for step in path:
        target = target[step]
    del target[key]
    return row


def _with(path: tuple, key: str, value: object) -> dict:
    row = json.loads(json.dumps(GOOD))
    target = row
    for step in path:
        target = target[step]
    target[key] = value
    return row


M0, M1, B0 = ("messages", 0), ("messages", 1), ("messages", 1, "content", 0)
B0_ = "messages[1].content[0]"


@pytest.mark.parametrize(
    "row, said",
    [
        (_without(M0, "role"), "messages[0].role: missing (user | assistant)"),
        (_with(M0, "role", None), "messages[0].role: unknown role null (user | assistant)"),
        (_with(M0, "role", "bot"), "messages[0].role: unknown role 'bot' (user | assistant)"),
        (_without(M1, "content"), "messages[1].content: missing"),
        (_with(M1, "content", "x"), "messages[1].content: expected a list of blocks, got a string"),
        (_without(B0, "type"), f"{B0_}.type: missing (text|code|execution)"),
        (_without(B0, "content"), f"{B0_}.content: missing"),
        (_with(B0, "content", None), f"{B0_}.content: expected a string, got null"),
        (_with(B0, "content", ["x"]), f"{B0_}.content: expected a string, got a list"),
        (_with((), "messages", {}), "messages: expected a list, got an object"),
    ],
)
def test_a_bad_field_is_named_in_the_files_terms(tmp_path, tokenizer_dir, capsys, row, said):
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps(GOOD) + "\r\n" + json.dumps(row) + "\r\n")  # Windows endings too
    code = main(["inspect", "--data", str(data), "--tokenizer", str(tokenizer_dir)])
    assert code == 1
    assert capsys.readouterr().err.strip() == f"reflectioncoder inspect: {data}:2:{said}"
