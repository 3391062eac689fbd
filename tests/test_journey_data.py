"""Training data as users bring it: a file saved by a Windows editor (a byte-order mark) trains
as prepare-data reads it; a sample missing a key says "missing" at its line, not a type."""

from __future__ import annotations

import json

import pytest

from reflectioncoder.cli import main
from reflectioncoder.testing.cli import ONE_STEP, train_argv
from reflectioncoder.testing.toy_jsonl import write_toy_jsonl
from reflectioncoder.tokenizer import train_tokenizer


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    good = write_toy_jsonl(root / "good.jsonl", 4, seed=0)
    train_tokenizer([good.read_text()], 300, root / "tok")
    return root


def _train(root, data, out):
    sets = {"data.files": f"[{data}]", "model.tokenizer": root / "tok", "checkpoint.out_dir": out}
    return main(train_argv({**sets, **ONE_STEP}, "--no-progress"))


def test_a_file_with_a_byte_order_mark_trains(toy, tmp_path, capsys):
    data = tmp_path / "windows.jsonl"
    data.write_bytes(b"\xef\xbb\xbf" + (toy / "good.jsonl").read_bytes().replace(b"\n", b"\r\n"))
    assert _train(toy, data, tmp_path / "run") == 0, capsys.readouterr().err
    assert (tmp_path / "run" / "final" / "config.json").is_file()


@pytest.mark.parametrize("key", ["type", "messages"])
def test_a_missing_key_is_named_missing_at_its_line(toy, tmp_path, capsys, key):
    rows = [json.loads(line) for line in (toy / "good.jsonl").read_text().splitlines()]
    del rows[2][key]
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert _train(toy, data, tmp_path / "run") == 1
    left = ", ".join(rows[2])
    assert capsys.readouterr().err == (
        f"reflectioncoder train: {data}:3:{key}: missing (the sample's keys: {left})\n"
    )
    assert not (tmp_path / "run").exists()
