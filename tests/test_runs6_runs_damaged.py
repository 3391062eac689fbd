"""``reflectioncoder runs`` listed a checkpoint whose optimizer.pt was cut short (a copy or sync
stopped midway) as ``complete``, and its last line said ``--resume continues from`` it, while
``--resume`` then stopped on it (torch's reader). Both now take the same look
(``checkpoint_files.damage``): ``runs`` lists it as damaged, names the one ``--resume`` would use
instead, and ``--resume`` refuses it with the same words before loading anything. ``runs`` also
says the name (and ids) the run's tracker runs go under, from OUT/tracker_runs.json."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest

from reflectioncoder.cli import main
from reflectioncoder.errors import UserError

SINGLE = {"engine": "single", "zero_stage": None, "world_size": 1}


def _torch_like(file: Path) -> None:
    """A file as torch.save writes it: a zip archive (what the look checks)."""
    file.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(file, "w") as archive:
        archive.writestr("archive/data.pkl", b"\x80\x02}q\x00." * 200)


def _checkpoint(run: Path, step: int) -> Path:
    path = run / "checkpoints" / f"step-{step:06d}"
    _torch_like(path / "optimizer.pt")
    _torch_like(path / "rng" / "rank-00000.pt")
    state = {"step": step, "total_steps": 4, "layout": SINGLE, "model_only": False}
    (path / "trainer_state.json").write_text(json.dumps(state))
    (path / "COMPLETE").write_text("ok\n")
    return path


@pytest.fixture
def run(tmp_path) -> Path:
    run = tmp_path / "run"
    _checkpoint(run, 2)
    cut = _checkpoint(run, 4) / "optimizer.pt"
    cut.write_bytes(cut.read_bytes()[:300])  # a copy cut short
    (run / "config.yaml").write_text("checkpoint:\n  save_every: 2\n")
    rows = [{"step": s, "loss": 6.0 - s} for s in (1, 2, 3, 4)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    ids = {"run_name": "demo-train-20261206-0153", "mlflow": "5f0c1d", "wandb": "3kq9"}
    (run / "tracker_runs.json").write_text(json.dumps(ids))
    return run


def test_runs_lists_a_cut_short_optimizer_as_damaged_and_names_the_tracker_runs(run, capsys):
    assert main(["runs", str(run)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[1].split() == ["checkpoints/step-000002", "2/4", "4.0000", "complete"]
    assert out[2].split(None, 3)[3] == (
        "damaged: optimizer.pt is cut short or garbled: not a whole torch file"
    )
    assert out[3] == "tracker runs: demo-train-20261206-0153 (mlflow 5f0c1d, wandb 3kq9)"
    assert out[4] == (
        f"--resume stops at {run}/checkpoints/step-000004 (damaged); --resume "
        f"{run}/checkpoints/step-000002 continues from the one before it"
    )


def test_resume_refuses_it_with_the_same_words_before_loading(run):
    pytest.importorskip("torch")
    import torch

    from reflectioncoder.train import restore
    from reflectioncoder.train.distributed import DistInfo

    class NotLoaded:
        def layout(self) -> dict:
            return SINGLE

        def load_state(self, path: Path) -> None:
            raise AssertionError("a damaged checkpoint was loaded")

    info = DistInfo(0, 1, 0, torch.device("cpu"), False)
    with pytest.raises(UserError) as refused:
        restore.load_checkpoint(run / "checkpoints" / "step-000004", NotLoaded(), info)
    assert str(refused.value) == (
        f"{run}/checkpoints/step-000004: --resume: cannot be read, a file in it is damaged "
        "(optimizer.pt is cut short or garbled: not a whole torch file); an earlier one: "
        f"--resume {run}/checkpoints/step-000002"
    )


def test_a_run_without_trackers_says_no_tracker_line(run, capsys):
    (run / "tracker_runs.json").unlink()
    assert main(["runs", str(run)]) == 0
    assert "tracker runs" not in capsys.readouterr().out


def test_a_file_of_torchs_legacy_format_is_not_called_damaged(run, capsys):
    """DeepSpeed's ``"checkpoint_serialization": false`` writes torch's legacy format (no zip)."""
    torch = pytest.importorskip("torch")
    path = run / "checkpoints" / "step-000004"
    torch.save({"exp_avg": torch.ones(3)}, path / "optimizer.pt",
               _use_new_zipfile_serialization=False)  # fmt: skip
    assert main(["runs", str(run)]) == 0
    assert f"--resume continues from {path}" in capsys.readouterr().out
