"""A launch into an existing run's folder that fails before it starts (bad data, a bad resume)
changes no file there, its lock file included (issue 11: no file created or changed in the
output folder); the lock is still held from the start, and names the run's process once it
writes its folder."""

from __future__ import annotations

import os
from pathlib import Path

from reflectioncoder.cli import main
from reflectioncoder.testing.cli import train_argv

SMALL = Path(__file__).resolve().parent / "data" / "reflection_small.jsonl"


def _sets(out: Path, data: Path) -> dict[str, object]:
    return {
        "data.files": f"[{data}]",
        "checkpoint.out_dir": out,
        "checkpoint.save_every": 1,
        "train.max_steps": 1,
        "logging.report_to": "[none]",
        "logging.plot": "false",
    }


def _snapshot(out: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def test_a_failed_start_leaves_the_lock_file_as_it_was(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(train_argv(_sets(out, SMALL), "--no-progress")) == 0
    (out / ".lock").write_text("pid 1 on the machine that made the run\n")
    before = _snapshot(out)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"type": "reflection", "messages": [{"role": "robot", "content": []}]}\n')
    for flag in ("--resume", "--overwrite"):
        assert main(train_argv(_sets(out, bad), flag, "--no-progress")) == 1
        assert len(capsys.readouterr().err.strip().splitlines()) == 1
        assert _snapshot(out) == before, flag
    assert main(train_argv(_sets(out, SMALL), "--resume", "--no-progress")) == 0
    assert (out / ".lock").read_text().startswith(f"pid {os.getpid()} on ")
