"""A --resume that fails in its checks once the run folder's lock is taken (here: a checkpoint
whose optimizer file is damaged, refused as the checkpoint loads) leaves the run's OUT/.lock as it
was, as a launch that fails before it starts does (tests/test_audit2_lock_untouched.py): a failed
command changes no file of the run. The lock names the resumed run once its checkpoint loaded."""

from __future__ import annotations

import os
from pathlib import Path

from reflectioncoder.cli import main
from reflectioncoder.testing.cli import train_argv

SMALL = Path(__file__).resolve().parent / "data" / "reflection_small.jsonl"


def _sets(out: Path, **extra: object) -> dict[str, object]:
    return {"data.files": f"[{SMALL}]", "checkpoint.out_dir": out, "checkpoint.save_every": 1,
            "train.max_steps": 1, "logging.report_to": "[none]", "logging.plot": "false",
            **extra}  # fmt: skip


def _snapshot(out: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def test_a_resume_refused_as_its_checkpoint_loads_leaves_the_lock_as_it_was(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(train_argv(_sets(out), "--no-progress")) == 0
    (out / ".lock").write_text("pid 1 on the machine that made the run\n")
    (out / "checkpoints" / "step-000001" / "optimizer.pt").write_bytes(b"not a torch file")
    before = _snapshot(out)
    capsys.readouterr()
    assert main(train_argv(_sets(out), "--resume", "--no-progress")) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot be read, a file in it is damaged" in err[0], err
    assert _snapshot(out) == before


def test_a_resume_refused_in_a_folder_without_a_lock_leaves_none(tmp_path, capsys):
    """A run folder copied without its OUT/.lock (or made by an older version): the failed
    resume takes the lock while it loads, and lets go of the file it made."""
    out = tmp_path / "run"
    assert main(train_argv(_sets(out), "--no-progress")) == 0
    (out / ".lock").unlink()
    (out / "checkpoints" / "step-000001" / "optimizer.pt").write_bytes(b"not a torch file")
    before = _snapshot(out)
    capsys.readouterr()
    assert main(train_argv(_sets(out), "--resume", "--no-progress")) == 1
    assert "cannot be read, a file in it is damaged" in capsys.readouterr().err
    assert not (out / ".lock").exists()
    assert _snapshot(out) == before


def test_a_resume_that_loads_names_itself_in_the_lock(tmp_path):
    out = tmp_path / "run"
    assert main(train_argv(_sets(out), "--no-progress")) == 0
    (out / ".lock").write_text("pid 1 on the machine that made the run\n")
    assert main(train_argv(_sets(out), "--resume", "--no-progress")) == 0
    assert (out / ".lock").read_text().startswith(f"pid {os.getpid()} on ")
