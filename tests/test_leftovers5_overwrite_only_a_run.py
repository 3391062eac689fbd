"""``--overwrite`` removes a run's files only from a folder that held a run. Into a folder that
never held one (``checkpoint.out_dir=.`` in a project's own folder, a typo of the folder), it
removed that folder's wandb/, mlruns/ and tensorboard/: another project's tracker runs, gone by
a mistake. A run folder is still cleared, and the log says what went."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from reflectioncoder.cli import main as cli_main
from reflectioncoder.train.run_folder import clear_run_folder


def _project(folder):
    for name in ("wandb/offline-run-1/run.wandb", "mlruns/0/meta.yaml", "tensorboard/events"):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text("another project's")
    (folder / "notes.txt").write_text("mine")
    return folder


def _files(folder) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def test_a_folder_that_held_no_run_keeps_its_trackers_folders(tmp_path):
    project = _project(tmp_path)
    before = _files(project)
    assert clear_run_folder(project) == []
    assert _files(project) == before


def test_a_run_folder_is_cleared_and_the_log_says_what_went(tmp_path, caplog):
    run = _project(tmp_path)
    (run / "config.yaml").write_text("train: {}\n")
    (run / "checkpoints" / "step-000002").mkdir(parents=True)
    (run / "metrics.jsonl").write_text('{"step": 1}\n')
    with caplog.at_level(logging.INFO, logger="reflectioncoder.train"):
        removed = clear_run_folder(run)
    assert removed == ["checkpoints", "metrics.jsonl", "tensorboard", "wandb", "mlruns"]
    assert _files(run) == ["config.yaml", "notes.txt"]
    assert caplog.messages == [
        "--overwrite: removed the earlier run's checkpoints, metrics.jsonl, tensorboard, wandb, "
        f"mlruns from {run}"
    ]


@pytest.mark.slow  # a real one-step run: about 20 s on a loaded 2-core machine
def test_train_overwrite_into_a_project_folder_keeps_its_files(tmp_path, monkeypatch):
    data = Path(__file__).parent / "data" / "reflection_small.jsonl"
    project = _project(tmp_path / "proj")
    monkeypatch.chdir(project)
    argv = ["train", "--preset", "tiny", "--no-progress", "--overwrite",
            "--set", f"data.files=[{data}]", "--set", "checkpoint.out_dir=.",
            "--set", "train.max_steps=1", "--set", "logging.report_to=[none]",
            "--set", "train.threads=1"]  # fmt: skip
    assert cli_main(argv) == 0
    files = _files(project)
    for kept in ("wandb/offline-run-1/run.wandb", "mlruns/0/meta.yaml", "tensorboard/events"):
        assert kept in files, files
