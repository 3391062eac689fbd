"""`reflectioncoder runs` given a folder inside a run (its final/, checkpoints/, a step) names the
run folder to give; a missing path says not found, a file says so (was 'holds no checkpoints
and no final model' for a run's own final/, and 'not a folder' for a typo)."""

from __future__ import annotations

import pytest

from reflectioncoder.cli import main


@pytest.fixture
def run(tmp_path):
    """A run folder as train leaves it (the parts `runs` reads)."""
    folder = tmp_path / "run"
    (folder / "checkpoints" / "step-000002" / "model").mkdir(parents=True)
    (folder / "final").mkdir()
    (folder / "config.yaml").write_text("model: {}\n")
    return folder


@pytest.mark.parametrize("inside", ["final", "checkpoints", "checkpoints/step-000002/model"])
def test_a_folder_inside_a_run_names_the_run(run, capsys, inside):
    assert main(["runs", str(run / inside)]) == 2
    assert capsys.readouterr().err == (
        f"reflectioncoder runs: {run / inside}: FOLDER: a folder inside the run {run}: give that\n"
    )


def test_a_typo_and_a_file_say_what_they_are(tmp_path, capsys):
    assert main(["runs", str(tmp_path / "nope")]) == 2
    assert capsys.readouterr().err.endswith(": FOLDER: not found\n")
    (tmp_path / "metrics.jsonl").write_text("")
    assert main(["runs", str(tmp_path / "metrics.jsonl")]) == 2
    assert capsys.readouterr().err.endswith(": FOLDER: a file, not a run folder\n")
    (tmp_path / "empty").mkdir()
    assert main(["runs", str(tmp_path / "empty")]) == 2
    assert capsys.readouterr().err.endswith(": FOLDER: holds no checkpoints and no final model\n")
