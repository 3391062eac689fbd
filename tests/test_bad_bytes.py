"""A user's file that is not UTF-8 (training data, samples, a config) is one line naming the file
and the line, never the bare "'utf-8' codec can't decode byte 0xff in position 1"."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_cli_errors import SAMPLE, _one_line_error

from reflectioncoder.testing.toy_jsonl import write_toy_jsonl


@pytest.fixture
def bad(tmp_path) -> dict[str, Path]:
    data = write_toy_jsonl(tmp_path / "data.jsonl", 3, seed=0)
    lines = data.read_bytes().splitlines(keepends=True)
    data.write_bytes(lines[0] + b'{"type": "\xff"}\n' + b"".join(lines[1:]))
    samples = tmp_path / "samples.jsonl"
    samples.write_bytes(json.dumps(SAMPLE).encode() + b"\n\n" + b'{"task_id": "\xfe"}\n')
    config = tmp_path / "my.yaml"
    config.write_bytes(b"preset: tiny\noptim:\n  lr: 1e-3 # caf\xe9\n")
    return {"data": data, "samples": samples, "config": config}


def test_training_data(bad, tmp_path, capfd):
    out = tmp_path / "out"
    argv = ["train", "--preset", "tiny", "--set", f"checkpoint.out_dir={out}"]
    argv += ["--set", f"data.files=[{bad['data']}]"]
    line = _one_line_error(capfd, argv, 1, out, f"{bad['data']}:2", "not UTF-8")
    assert "codec" not in line


def test_samples(bad, tmp_path, capfd):
    argv = ["evaluate", "--task", "humaneval", "--samples", str(bad["samples"])]
    line = _one_line_error(capfd, argv, 1, tmp_path / "none", f"{bad['samples']}:3", "not UTF-8")
    assert "codec" not in line


def test_config(bad, tmp_path, capfd):
    out = tmp_path / "out"
    argv = ["train", "--config", str(bad["config"]), "--set", f"checkpoint.out_dir={out}"]
    line = _one_line_error(capfd, argv, 2, out, f"{bad['config']}:3", "not UTF-8 (byte 17)")
    assert "codec" not in line
