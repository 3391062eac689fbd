"""A checkpoint.out_dir that is another project's folder (its own config.yaml, no run in it):
a fresh start took it for a run stopped before its first step ("starting it again (config.yaml
and tokenizer/ are rewritten)") and replaced the project's config.yaml with the run's; --resume
and --overwrite did the same (--overwrite's clearing took that config.yaml for a run's). Now a
config.yaml that is not a run's stops every launch in one line, the folder untouched."""

from __future__ import annotations

import pytest

from reflectioncoder.cli import main
from reflectioncoder.config_loader import load_config
from reflectioncoder.testing.cli import train_argv
from reflectioncoder.train.run_folder import clear_run_folder, is_run_config


@pytest.fixture
def project(tmp_path):
    folder = tmp_path / "proj"
    (folder / "src").mkdir(parents=True)
    (folder / "config.yaml").write_text("lr: 0.1\nmodel: resnet\n")
    (folder / "wandb").mkdir()
    (folder / "wandb" / "run.txt").write_text("the project's own\n")
    return folder


def _files(folder):
    return {p: p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("flags", [(), ("--resume",), ("--overwrite",)])
def test_a_folder_of_another_project_is_refused_untouched(project, capsys, flags):
    before = _files(project)
    assert main(train_argv({"checkpoint.out_dir": project}, *flags)) == 1
    assert capsys.readouterr().err.splitlines() == [
        f"reflectioncoder train: {project}: checkpoint.out_dir: holds a config.yaml that is not "
        "a reflectioncoder run's (another project's folder?): a run would replace it; choose "
        "another folder"
    ]
    assert _files(project) == before and sorted(p.name for p in project.iterdir()) == [
        "config.yaml", "src", "wandb"]  # fmt: skip


def test_a_runs_own_config_is_a_runs(tmp_path, project):
    load_config(base="tiny").save(tmp_path / "config.yaml")
    assert is_run_config(tmp_path / "config.yaml")
    assert not is_run_config(project / "config.yaml")
    assert clear_run_folder(project) == [] and (project / "wandb" / "run.txt").is_file()


def test_runs_does_not_take_it_for_a_run(project, capsys):
    """`runs` said "a run that stopped before its first step" of a project's folder."""
    assert main(["runs", str(project)]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"reflectioncoder runs: {project}: FOLDER: holds no checkpoints and no final model"
    ]
