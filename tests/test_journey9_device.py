"""``train.device: cuda`` on a machine without a GPU is named where it was set, as every other
value refused once the machine is known: it said ``train.device: cuda requested but
torch.cuda.is_available() is False`` (exit 1), naming neither the ``--set`` nor the file's
line, nor what to set instead."""

from __future__ import annotations

import pytest
import torch

from reflectioncoder.cli import main
from reflectioncoder.testing.cli import train_argv

NO_GPU = (
    "train.device: cuda requested but this torch build or machine has no CUDA device "
    "(torch.cuda.is_available() is False); auto, the default, trains on the CPU here"
)
pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU takes train.device: cuda")


def test_cuda_on_a_machine_without_one_names_the_set(tmp_path, capsys):
    sets = {"data.files": f"[{tmp_path / 'd.jsonl'}]", "checkpoint.out_dir": tmp_path / "run"}
    assert main(train_argv({**sets, "train.device": "cuda"})) == 2
    said = capsys.readouterr().err
    assert said == f"reflectioncoder train: --set train.device=cuda: {NO_GPU}\n"
    assert not (tmp_path / "run").exists()


def test_cuda_on_a_machine_without_one_names_the_files_line(tmp_path, capsys):
    config = tmp_path / "my.yaml"
    config.write_text(
        f"preset: tiny\ndata:\n  files: [{tmp_path / 'd.jsonl'}]\ntrain:\n  device: cuda\n"
        f"checkpoint:\n  out_dir: {tmp_path / 'run'}\n"
    )
    assert main(["train", "--config", str(config)]) == 2
    assert capsys.readouterr().err == f"reflectioncoder train: {config}:5:11: {NO_GPU}\n"
