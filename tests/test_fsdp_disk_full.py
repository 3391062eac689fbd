"""The disk fills up while an FSDP run writes its shards (torch's distributed checkpoint): one
line naming the checkpoint and the reason, as for the other engines, where DCP's
CheckpointException (a BaseException, which no error boundary catches) ended the run in a
traceback; the partial folder removed, the earlier checkpoint whole."""

from __future__ import annotations

import errno

import torch.distributed.checkpoint.filesystem as dcp_files

from reflectioncoder.cli import main
from reflectioncoder.testing.cli import train_argv
from reflectioncoder.testing.toy_jsonl import write_toy_jsonl
from reflectioncoder.tokenizer import train_tokenizer


def test_a_full_disk_while_fsdp_writes_its_shards(tmp_path, capsys, monkeypatch):
    data = write_toy_jsonl(tmp_path / "data.jsonl", 8, seed=0)
    train_tokenizer([data.read_text()], 300, tmp_path / "tok")
    out = tmp_path / "run"
    sets = {"data.files": f"[{data}]", "model.tokenizer": tmp_path / "tok"}
    sets.update({"checkpoint.out_dir": out, "checkpoint.save_every": 2})
    sets.update({"train.samples_per_step": 2, "train.max_steps": 4})
    sets.update({"logging.report_to": "[none]", "distributed.backend": "fsdp"})
    real_write = dcp_files._write_item

    def full_at_step_4(*args, **kwargs):
        if any(".tmp-step-000004" in str(a) for a in args):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(*args, **kwargs)

    monkeypatch.setattr(dcp_files, "_write_item", full_at_step_4)
    assert main(train_argv(sets, "--no-progress")) == 1
    err = capsys.readouterr().err
    assert err == (
        f"reflectioncoder train: {out / 'checkpoints' / 'step-000004'}: checkpoint.out_dir: "
        "not saved: No space left on device; the checkpoints before it are whole: make room, then "
        f"the same command with --resume continues from {out / 'checkpoints' / 'step-000002'}\n"
    )
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-000002"]
    assert (out / "checkpoints" / "step-000002" / "COMPLETE").is_file()
