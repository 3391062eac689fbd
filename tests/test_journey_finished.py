"""A finished run launched again with --resume (a requeued job, a resume-always script): it
writes nothing again (it saved its last checkpoint and its final model anew, which at 34B is
half a terabyte) and says the run was complete; a final model a kill took is saved. The last log
line reads as a sentence, not a dict."""

from __future__ import annotations

import logging
import shutil

from reflectioncoder.cli import main
from reflectioncoder.testing.cli import ONE_STEP, train_argv
from reflectioncoder.testing.toy_jsonl import write_toy_jsonl
from reflectioncoder.tokenizer import train_tokenizer


def _written(out):
    return {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and p.name != ".lock"}


def test_resuming_a_finished_run_writes_nothing(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="reflectioncoder.train")
    data = write_toy_jsonl(tmp_path / "data.jsonl", 4, seed=0)
    train_tokenizer([data.read_text()], 300, tmp_path / "tok")
    out = tmp_path / "run"
    sets = {"data.files": f"[{data}]", "model.tokenizer": tmp_path / "tok", **ONE_STEP}
    sets.update({"checkpoint.out_dir": out, "train.max_steps": 2, "checkpoint.save_every": 1})
    argv = train_argv(sets, "--no-progress")
    assert main(argv) == 0
    first_log = caplog.text
    saved = {p: t for p, t in _written(out).items() if {"checkpoints", "final"} & set(p.parts)}

    caplog.clear()
    assert main([*argv, "--resume"]) == 0
    assert {p: t for p, t in _written(out).items() if p in saved} == saved
    model = out / "final"
    assert "done: 2 of 2 steps, 0 skipped, last loss " in first_log
    assert f"; model: {model}\n" in first_log
    assert f"done: the run was already complete (2 of 2 steps); model: {model}\n" in caplog.text

    shutil.rmtree(model)  # killed while saving its final model
    assert main([*argv, "--resume"]) == 0
    assert (model / "config.json").is_file()
