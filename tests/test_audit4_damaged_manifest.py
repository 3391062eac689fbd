"""A damaged prepare-data manifest beside a training file stops `train` at start-up in one line
naming it, before the run folder is written (issue 11: one line naming file and line, nothing
lost; issue 23: the card carries the manifest). The card read it at each save: the run trained
to its first checkpoint and died there, 'line 2 column 1: invalid JSON', no file named and no
checkpoint kept."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_distributed import ARCH

from reflectioncoder.cli import main
from reflectioncoder.testing.cli import train_argv
from reflectioncoder.testing.toy_jsonl import write_toy_jsonl


@pytest.mark.parametrize(
    "text, where",
    [
        ('{"written": 3,\n', ":2: invalid JSON"),  # cut short
        ('{"written": 3, "inputs": [{"path": "a.jsonl"}]}\n', ": not a prepare-data manifest"),
        (b"\xff{}", ": not UTF-8 (byte 1)"),
    ],
)
def test_a_damaged_manifest_is_one_line_at_start_up(tmp_path, capsys, text, where):
    data = write_toy_jsonl(tmp_path / "toy.jsonl", 8, seed=0)
    manifest = tmp_path / "toy.manifest.json"
    if isinstance(text, bytes):
        manifest.write_bytes(text)
    else:
        manifest.write_text(text)
    out = tmp_path / "run"
    sets = {"model.tokenizer_vocab_size": 400, "data.files": f"[{data}]", "checkpoint.out_dir": out}
    sets.update(dict([ARCH.split("=", 1)]))
    sets.update({"checkpoint.save_every": 1, "train.max_steps": 2, "train.samples_per_step": 2})
    sets.update({"packing.max_tokens": 400, "logging.report_to": "[none]"})
    assert main(train_argv(sets, "--no-progress")) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f"reflectioncoder train: {manifest}{where}"), err
    assert not out.exists()


def test_the_card_keeps_the_manifest_the_run_started_with(tmp_path):
    from reflectioncoder.config_loader import load_config
    from reflectioncoder.data.prepare import prepare
    from reflectioncoder.train.model_card import parse, read_manifests, run_card

    source = Path(__file__).resolve().parent / "data" / "prepare" / "reflectionseq.jsonl"
    data = tmp_path / "prepared.jsonl"
    prepare([source], data, index=None, progress=False)
    cfg = load_config(base="tiny", overrides=[f"data.files=[{data}]"])
    manifests = read_manifests(cfg.data.files)
    (tmp_path / "prepared.manifest.json").write_text("{")  # changed during the run
    progress = {"step": 1, "total_steps": 2, "skipped": 0, "totals": {}, "last_row": None}
    _, _, sections = parse(run_card(cfg, {}, progress, manifests))
    assert f"rows from `{source}`" in sections["Training data"]
