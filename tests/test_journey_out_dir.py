"""``checkpoint.out_dir`` that can never hold the run (a file, a read-only file system): one
line at start, before the data, tokenizer and model load (a file said "File exists" once the
model had loaded; a read-only folder failed at the first write)."""

from __future__ import annotations

import os
import subprocess

import pytest

from reflectioncoder.cli import main
from reflectioncoder.testing.cli import train_argv


def _train(tmp_path, out):
    data = tmp_path / "data.jsonl"
    data.write_text("")  # never read: the folder is refused first
    return main(train_argv({"data.files": f"[{data}]", "checkpoint.out_dir": out}))


def test_an_out_dir_that_is_a_file(tmp_path, capsys):
    out = tmp_path / "notes.txt"
    out.write_text("mine\n")
    assert _train(tmp_path, out) == 2
    assert capsys.readouterr().err == (
        f"reflectioncoder train: {out}: checkpoint.out_dir: is a file; give a folder\n"
    )
    assert out.read_text() == "mine\n"


@pytest.fixture
def read_only(tmp_path):
    """A read-only file system (root can write anywhere else), where mounting is allowed."""
    where = tmp_path / "ro"
    where.mkdir()
    mounted = (
        os.geteuid() == 0
        and not subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(where)], capture_output=True
        ).returncode
    )
    if not mounted:
        pytest.skip("cannot mount a read-only tmpfs here")
    yield where
    subprocess.run(["umount", str(where)], check=True)


def test_an_out_dir_on_a_read_only_file_system(tmp_path, read_only, capsys):
    out = read_only / "runs" / "tiny"
    assert _train(tmp_path, out) == 1
    assert capsys.readouterr().err == (
        f"reflectioncoder train: {out}: checkpoint.out_dir: cannot be written ({read_only} is "
        "read-only to this user)\n"
    )
