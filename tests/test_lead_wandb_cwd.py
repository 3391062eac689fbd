"""W&B's offline files land in the run folder even when an earlier run of the same process
started wandb's service from another working directory: the service (one per process) resolved
a relative ``dir`` in its own cwd, so the second run's ``.wandb`` log went to the first run's
folder (a notebook training twice; CI saw it as the documented reader finding no run)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

from reflectioncoder.config import LoggingConfig
from reflectioncoder.train.metrics import MetricsLogger

pytestmark = pytest.mark.skipif(
    shutil.which("wandb", path=str(Path(sys.executable).parent)) is None,
    reason="wandb not installed",
)


def _one_run(folder: Path, monkeypatch) -> None:
    folder.mkdir()
    monkeypatch.chdir(folder)
    cfg = LoggingConfig(report_to=["wandb"], progress=False, plot=False)
    metrics = MetricsLogger(Path("OUT"), cfg, total_steps=1, run_config={"seed": 7})
    metrics.log({"step": 1, "loss": 2.5, "kl": 0.1, "samples": 2, "tokens": 9})
    metrics.close(plot=False)


def test_a_second_run_in_another_folder_keeps_its_wandb_log(tmp_path, monkeypatch):
    for name in ("first", "second"):
        monkeypatch.delenv("WANDB_DIR", raising=False)
        _one_run(tmp_path / name, monkeypatch)
    for name in ("first", "second"):
        logs = list((tmp_path / name / "OUT" / "wandb").glob("offline-run-*/run-*.wandb"))
        found = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*.wandb"))
        assert len(logs) == 1, (name, found)
