"""A disk that really fills up while a checkpoint is written. torch.save's writer fails with a
RuntimeError (``basic_ios::clear: iostream error``, ``unexpected pos ...``), not an OSError, so
the save's guard let it through: the partial ``.tmp-step-*`` folder kept the space it took, and
the end of the run then failed drawing loss.png on the full disk, whose ``[Errno 28] No space
left on device`` named no file and replaced the save's error, leaving a 0-byte loss.png. Now the
line names the checkpoint, the partial folder is gone, the plot is drawn (or, refused, a
warning and no partial file), and ``--resume`` goes on once there is room."""

from __future__ import annotations

import errno
import logging
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from reflectioncoder.train import checkpoint
from reflectioncoder.train.metrics import plot_losses

TORCH_FULL = "[enforce fail at inline_container.cc:672] . unexpected pos 539008 vs 538896"


def test_torch_saves_failed_write_on_a_full_disk_is_the_disks_refusal(tmp_path, monkeypatch):
    monkeypatch.setattr(checkpoint, "_free_bytes", lambda folder: 0)
    err = checkpoint._disk_error(RuntimeError(TORCH_FULL), tmp_path)
    assert isinstance(err, OSError) and err.errno == errno.ENOSPC
    assert checkpoint._disk_error(RuntimeError("CUDA error: out of memory"), tmp_path) is None


def test_a_plot_the_disk_refuses_is_a_warning_and_no_partial_file(tmp_path, monkeypatch, caplog):
    import matplotlib.figure

    def fill_the_disk(fig, path, **kwargs):
        Path(path).write_bytes(b"\x89PNG half")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", fill_the_disk)
    rows = [{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.5}]
    with caplog.at_level(logging.WARNING, logger="reflectioncoder.train"):
        assert plot_losses(rows, tmp_path / "loss.png") is None
    assert list(tmp_path.iterdir()) == []
    assert caplog.messages == [f"{tmp_path / 'loss.png'} not drawn: No space left on device"]


@pytest.fixture
def small_disk(tmp_path):
    """A 3 MiB tmpfs (root only): a tiny-model checkpoint (about 1.7 MiB) fills it."""
    disk = tmp_path / f"disk-{uuid.uuid4().hex[:6]}"
    disk.mkdir()
    mount = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(disk)],
                           capture_output=True, text=True)  # fmt: skip
    if mount.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mount.stderr.strip()}")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=False)


@pytest.mark.slow  # two real runs of the tiny model: about 40 s on a loaded 2-core machine
def test_a_full_disk_while_checkpointing_then_resume(small_disk):
    data = Path(__file__).parent / "data" / "reflection_small.jsonl"
    out = small_disk / "run"
    argv = [sys.executable, "-m", "reflectioncoder.cli", "train", "--preset", "tiny",
            "--no-progress", "--set", f"data.files=[{data}]", "--set", f"checkpoint.out_dir={out}",
            "--set", "train.max_steps=6", "--set", "train.epochs=10",
            "--set", "train.samples_per_step=1", "--set", "checkpoint.save_every=2",
            "--set", "train.threads=1", "--set", "logging.report_to=[none]"]  # fmt: skip
    full = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    assert full.returncode == 1, full.stderr[-3000:]
    ours = [line for line in full.stderr.splitlines() if line.startswith("reflectioncoder train:")]
    assert len(ours) == 1 and ours[0].startswith(
        f"reflectioncoder train: {out}/checkpoints/step-000"
    ), full.stderr[-3000:]
    assert ours[0].endswith(
        "checkpoint.out_dir: not saved: No space left on device; the checkpoints before it are "
        f"whole: make room, then the same command with --resume continues from {out}/checkpoints/"
        "step-000002"
    )
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step-000002"]  # no partial
    plot = out / "loss.png"
    assert not plot.exists() or plot.read_bytes().startswith(b"\x89PNG")  # never half a PNG
    subprocess.run(["mount", "-o", "remount,size=20m", str(small_disk)], check=True)
    again = subprocess.run([*argv, "--resume"], capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert (out / "final" / "config.json").is_file()


class _FullDisk:
    """metrics.jsonl's file on a full disk: every write and the final flush refused."""

    def write(self, text: str) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    def close(self) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")


def test_a_metrics_row_the_disk_refuses_names_the_file(tmp_path, caplog):
    from reflectioncoder.config import LoggingConfig
    from reflectioncoder.errors import one_line
    from reflectioncoder.train.metrics import MetricsLogger

    cfg = LoggingConfig(report_to=["none"], progress=False, plot=False)
    logger = MetricsLogger(tmp_path, cfg, total_steps=2)
    logger._file.close()
    logger._file = _FullDisk()
    row = {"step": 1, "loss": 2.0, "kl": 0.1, "samples": 2, "tokens": 9}
    with pytest.raises(OSError) as raised:
        logger.log(row)
    path = tmp_path / "metrics.jsonl"
    assert one_line(raised.value) == (f"{path}: No space left on device", 1)
    with caplog.at_level(logging.WARNING, logger="reflectioncoder.train"):
        logger.close(plot=False)  # does not raise over the error above
    assert caplog.messages == [f"{path}: its last row not written: No space left on device"]
