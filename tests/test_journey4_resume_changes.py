"""A resume with a changed config that is allowed (another lr, another print rate) says what
changed: OUT/config.yaml is rewritten with the new values, and nothing kept the old ones."""

from __future__ import annotations

import logging
import shutil

from reflectioncoder.cli import main

DATA = "tests/data/reflection_small.jsonl"


def _argv(out, *extra):
    return ["train", "--preset", "tiny", "--set", f"data.files=[{DATA}]", "--no-progress",
            "--set", f"checkpoint.out_dir={out}", "--set", "train.max_steps=2",
            "--set", "checkpoint.save_every=1", "--set", "logging.report_to=[none]",
            *extra]  # fmt: skip


def test_a_resume_logs_the_values_it_changes(tmp_path, caplog):
    out = tmp_path / "run"
    assert main(_argv(out)) == 0
    # as a kill after the first checkpoint leaves it
    shutil.rmtree(out / "checkpoints" / "step-000002")
    shutil.rmtree(out / "final")
    caplog.clear()
    with caplog.at_level(logging.INFO):
        assert main(_argv(out, "--resume", "--set", "optim.lr=1e-3")) == 0
    changed = [r.getMessage() for r in caplog.records if "config changed" in r.getMessage()]
    assert changed == ["--resume: config changed from the run's: optim.lr 0.002 -> 0.001"]
    assert "lr: 0.001" in (out / "config.yaml").read_text()
