"""A ``--resume`` never loses a metrics row: the rows it logs again move to
OUT/metrics.replaced.jsonl, each marked with when and from which step, and the restart says in
one line what it does.

It lost them: with no checkpoint in the folder (a run that logged steps, then failed before its
first save), ``--resume`` started from step 0 and rewrote metrics.jsonl with none of the rows
it held; resuming from a checkpoint, the rows logged after it were cut the same way. Each
launch here is a real ``reflectioncoder train`` process, as a user relaunches it."""

from __future__ import annotations

import json
import shutil

import pytest
from test_relaunch_first_step import _argv, _train

from reflectioncoder.config import LoggingConfig
from reflectioncoder.train.metrics import REPLACED, MetricsLogger, read_metrics, restart_note


def _steps(rows: list[dict]) -> list[int]:
    return [r["step"] for r in rows]


@pytest.mark.slow  # two real runs: about 50 s on a loaded 2-core machine
def test_resume_without_a_checkpoint_keeps_the_rows_it_logs_again(tmp_path):
    failed = _train(_argv(tmp_path), how="second")  # step 1 logged, failed in step 2, no save
    assert failed.returncode == 1, failed.stderr[-3000:]
    out = tmp_path / "run"
    before = read_metrics(out / "metrics.jsonl")
    assert _steps(before) == [1] and not (out / "checkpoints").exists()

    again = _train(_argv(tmp_path, "--resume"))
    assert again.returncode == 0, again.stderr[-3000:]
    note = [line for line in again.stderr.splitlines() if "--resume" in line]
    assert len(note) == 1 and note[0].endswith(
        f"--resume: no checkpoint in {out}; starting from step 0; the rows of 1 step (1) "
        f"logged so far move to {out / REPLACED}"
    ), note
    assert _steps(read_metrics(out / "metrics.jsonl")) == [1, 2]  # each step once
    kept = read_metrics(out / REPLACED)
    assert [{k: v for k, v in r.items() if k not in ("replaced_at", "resumed_from_step")}
            for r in kept] == before  # fmt: skip
    assert kept[0]["resumed_from_step"] == 0 and kept[0]["replaced_at"].endswith("+00:00")


@pytest.mark.slow  # two real runs of 4 steps: about 40 s on a loaded 2-core machine
def test_resume_from_a_checkpoint_keeps_the_rows_logged_after_it(tmp_path):
    argv = _argv(tmp_path)
    argv[argv.index("checkpoint.save_every=0")] = "checkpoint.save_every=2"
    argv[argv.index("train.max_steps=2")] = "train.max_steps=4"
    assert _train(argv).returncode == 0
    out = tmp_path / "run"
    # Killed after its step-2 checkpoint: the later checkpoint and the final model never made.
    shutil.rmtree(out / "checkpoints" / "step-000004")
    shutil.rmtree(out / "final")
    before = read_metrics(out / "metrics.jsonl")

    again = _train([*argv, "--resume"])
    assert again.returncode == 0, again.stderr[-3000:]
    assert (
        f"--resume: the rows of 2 steps (3-4) logged after step 2 move to {out / REPLACED}; "
        "this run logs them again"
    ) in again.stderr
    assert _steps(read_metrics(out / "metrics.jsonl")) == [1, 2, 3, 4]
    kept = [json.loads(line) for line in (out / REPLACED).read_text().splitlines()]
    assert [r["resumed_from_step"] for r in kept] == [2, 2]
    assert [{k: r[k] for k in before[2]} for r in kept] == before[2:]


def _row(step: int) -> dict:
    return {"step": step, "loss": 10.0 - step, "kl": 0.1, "samples": 2, "tokens": 9}


@pytest.mark.parametrize("start_step", [0, 2])
def test_the_metrics_logger_keeps_every_row_a_resume_logs_again(tmp_path, start_step):
    """The trainer's logger as a resume opens it: from step 0 (no checkpoint) or from 2."""
    cfg = LoggingConfig(report_to=["none"], progress=False, plot=False)
    first = MetricsLogger(tmp_path, cfg, total_steps=5)
    for step in (1, 2, 3):
        first.log(_row(step))
    first.close()
    if start_step == 0:
        assert restart_note(tmp_path, ["tensorboard", "wandb"]) == (
            f"no checkpoint in {tmp_path}; starting from step 0; the rows of 3 steps (1-3) "
            f"logged so far move to {tmp_path / REPLACED} and the trackers start new runs"
        )
    again = MetricsLogger(tmp_path, cfg, total_steps=5, start_step=start_step)
    again.close()
    assert _steps(read_metrics(tmp_path / "metrics.jsonl")) == [1, 2, 3][:start_step]
    kept = read_metrics(tmp_path / REPLACED)
    assert [{k: r[k] for k in _row(1)} for r in kept] == [_row(s) for s in (1, 2, 3)][start_step:]
    assert {r["resumed_from_step"] for r in kept} == {start_step}
    assert restart_note(tmp_path, []) == f"no checkpoint in {tmp_path}; starting from step 0" + (
        ""
        if start_step == 0
        else f"; the rows of 2 steps (1-2) logged so far move to {tmp_path / REPLACED}"
    )
