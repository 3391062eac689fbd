"""A resume with a changed config that is allowed (another lr, another print rate) says what
changed: OUT/config.yaml is rewritten with the new values, and nothing kept the old ones."""

from __future__ import annotations

import logging
import shutil

from test_journey4_resume_other_run import run_argv

from reflectioncoder.cli import main


def test_a_resume_logs_the_values_it_changes(tmp_path, caplog):
    out = tmp_path / "run"
    assert main(run_argv(out, steps=2)) == 0
    # as a kill after the first checkpoint leaves it
    shutil.rmtree(out / "checkpoints" / "step-000002")
    shutil.rmtree(out / "final")
    caplog.clear()
    with caplog.at_level(logging.INFO):
        assert main(run_argv(out, "--resume", "--set", "optim.lr=1e-3", steps=2)) == 0
    changed = [r.getMessage() for r in caplog.records if "config changed" in r.getMessage()]
    assert changed == ["--resume: config changed from the run's: optim.lr 0.002 -> 0.001"]
    assert "lr: 0.001" in (out / "config.yaml").read_text()
