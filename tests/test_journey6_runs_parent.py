"""`reflectioncoder runs runs/` (the folder holding the runs, not one run) names the runs in it.

After the SmolLM2 loop, `reflectioncoder runs runs/j6` answered only "holds no checkpoints and no
final model", though five run folders were right there."""

from __future__ import annotations

import pytest

from reflectioncoder.cli import main


def _run(folder):
    (folder / "checkpoints").mkdir(parents=True)
    (folder / "config.yaml").write_text("model: {}\n")


def test_runs_on_the_parent_folder_names_its_runs(tmp_path, capsys):
    _run(tmp_path / "runs" / "b")
    _run(tmp_path / "runs" / "a")
    (tmp_path / "runs" / "data").mkdir()
    assert main(["runs", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith(
        "runs: FOLDER: holds no checkpoints and no final model; the runs in it: a, b: give one"
    )
    assert len(err.splitlines()) == 1


@pytest.mark.parametrize("inside", [False, True])
def test_an_empty_folder_says_only_what_it_lacks(tmp_path, capsys, inside):
    folder = tmp_path / "empty"
    folder.mkdir()
    if inside:
        (folder / "notes").mkdir()
    assert main(["runs", str(folder)]) == 2
    assert capsys.readouterr().err.strip().endswith("holds no checkpoints and no final model")


def test_runs_one_folder_deeper_are_named_too(tmp_path, capsys):
    """journey9: `make demo` trains in runs/demo/train, which `runs runs` left out."""
    _run(tmp_path / "runs" / "demo" / "train")
    (tmp_path / "runs" / "demo" / "data").mkdir()
    _run(tmp_path / "runs" / "tiny")
    assert main(["runs", str(tmp_path / "runs")]) == 2
    assert capsys.readouterr().err.strip().endswith("the runs in it: demo/train, tiny: give one")
