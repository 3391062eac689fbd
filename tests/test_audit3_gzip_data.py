"""Training data compressed as ``*.jsonl.gz`` (how datasets are often shipped; ``prepare-data``
already reads them) loads as the plain file does; it was "FILE:1:<text>: not UTF-8 (byte 2)".
A damaged gzip stream is one DataError naming the file, and a bad line inside still names its
file, line and field."""

from __future__ import annotations

import gzip
import json

import pytest

from reflectioncoder.data.schema import DataError, load_files, load_jsonl
from reflectioncoder.testing.toy_jsonl import write_toy_jsonl


def test_a_gzipped_file_gives_the_plain_files_samples(tmp_path):
    plain = write_toy_jsonl(tmp_path / "data.jsonl", 12, seed=0)
    packed = tmp_path / "data.jsonl.gz"
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    samples, report = load_files([plain, packed], upsample=[1, 2])
    assert len(samples) == 36 and report.per_file[str(packed)] == 12
    assert samples[:12] == [
        type(s)(s.type, s.messages, s.source.replace(".jsonl.gz", ".jsonl")) for s in samples[12:24]
    ]
    assert samples[12].source == f"{packed}:1"


def test_a_bad_line_inside_is_named(tmp_path):
    lines = write_toy_jsonl(tmp_path / "data.jsonl", 3, seed=0).read_text().splitlines()
    row = json.loads(lines[2])
    row["messages"][0]["role"] = "system"
    lines[2] = json.dumps(row)
    packed = tmp_path / "data.jsonl.gz"
    packed.write_bytes(gzip.compress(("\n".join(lines) + "\n").encode()))
    with pytest.raises(DataError, match=rf"^{packed}:3:messages\[0\]\.role: unknown role"):
        load_jsonl(packed)


@pytest.mark.parametrize("damage", ["truncated", "not gzip"])
def test_a_damaged_gzip_file_is_one_error(tmp_path, damage):
    plain = write_toy_jsonl(tmp_path / "data.jsonl", 40, seed=0).read_bytes()
    packed = tmp_path / "data.jsonl.gz"
    body = gzip.compress(plain)
    packed.write_bytes(body[: len(body) // 2] if damage == "truncated" else plain)
    with pytest.raises(DataError, match=rf"^{packed}:<file>: not a whole gzip file after line"):
        load_jsonl(packed, skip_bad=True)
