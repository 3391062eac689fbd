"""The disk fills up while a checkpoint is written: one line naming the checkpoint and the
reason (no "internal error"), the partial folder removed (it gives back its space), the earlier
checkpoint whole, and a relaunch with --resume goes on from it."""

from __future__ import annotations

import errno
import json

import pytest
import torch
import transformers.modeling_utils
from safetensors import SafetensorError

from reflectioncoder.cli import main
from reflectioncoder.testing.cli import train_argv
from reflectioncoder.testing.toy_jsonl import write_toy_jsonl
from reflectioncoder.tokenizer import train_tokenizer


def _argv(tmp_path, out, *extra):
    data = write_toy_jsonl(tmp_path / "data.jsonl", 8, seed=0)
    if not (tmp_path / "tok").is_dir():
        train_tokenizer([data.read_text()], 300, tmp_path / "tok")
    sets = {
        "data.files": f"[{data}]",
        "model.tokenizer": tmp_path / "tok",
        "checkpoint.out_dir": out,
        "checkpoint.save_every": 2,
        "train.samples_per_step": 2,
        "train.max_steps": 4,  # checkpoints at 2 and 4
        "logging.report_to": "[none]",
    }
    return train_argv(sets, "--no-progress", *extra)


# Where the disk fills: the optimizer state (torch.save, after the model is written), or the
# model's weights (safetensors, whose error is its own type).
DISK_FULL = {
    "optimizer": (torch, "save", OSError(errno.ENOSPC, "No space left on device", "optimizer.pt")),
    "weights": (
        transformers.modeling_utils,
        "safe_save_file",
        SafetensorError(
            "Error while serializing: I/O error: No space left on device (os error 28)"
        ),
    ),
}


@pytest.mark.parametrize("where", sorted(DISK_FULL))
def test_a_full_disk_while_saving_a_checkpoint(tmp_path, capsys, monkeypatch, where):
    out = tmp_path / "run"
    module, name, error = DISK_FULL[where]
    real_save = getattr(module, name)

    def full_at_step_4(obj, f, *args, **kwargs):
        if ".tmp-step-000004" in str(f):
            raise error
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(module, name, full_at_step_4)
    assert main(_argv(tmp_path, out)) == 1
    err = capsys.readouterr().err
    assert err.startswith(
        f"reflectioncoder train: {out / 'checkpoints' / 'step-000004'}: checkpoint.out_dir: "
        "not saved: "
    )
    then = (  # what to run once there is room: where --resume continues
        "; the checkpoints before it are whole: make room, then the same command with --resume "
        f"continues from {out / 'checkpoints' / 'step-000002'}\n"
    )
    assert err.endswith(f"No space left on device{then}") or err.endswith(f"(os error 28){then}")
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-000002"]
    assert (out / "checkpoints" / "step-000002" / "COMPLETE").is_file()

    monkeypatch.setattr(module, name, real_save)  # space freed: the user relaunches
    assert main(_argv(tmp_path, out, "--resume")) == 0, capsys.readouterr().err
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").open()]
    assert steps == [1, 2, 3, 4]
    assert (out / "final" / "config.json").is_file()
