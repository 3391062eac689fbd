"""Runs are never lost: a fresh launch into a run's folder is refused (nothing touched) unless
--resume or --overwrite; model-only checkpoints; keep_last never deletes the checkpoint just
written; a SIGKILL in the middle of a save leaves the previous checkpoint, and the run resumes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from reflectioncoder.cli import main
from reflectioncoder.config_loader import load_config
from reflectioncoder.testing.toy_jsonl import write_toy_jsonl
from reflectioncoder.train.checkpoint import TMP_PREFIX, latest_checkpoint, list_checkpoints
from reflectioncoder.train.metrics import read_metrics
from reflectioncoder.train.trainer import Trainer

ARCH = (
    "model.arch={hidden_size: 32, intermediate_size: 48, num_layers: 2, num_heads: 4, "
    "num_kv_heads: 2, max_position_embeddings: 512}"
)


def _overrides(data: Path, out: Path, seed: int, *extra: str) -> list[str]:
    return [
        ARCH,
        "model.tokenizer_vocab_size=400",
        f"data.files=[{data}]",
        f"checkpoint.out_dir={out}",
        "checkpoint.save_every=1",
        "checkpoint.save_final=false",
        f"train.seed={seed}",
        "train.epochs=1",
        "train.samples_per_step=2",
        "packing.max_tokens=400",
        "logging.progress=false",
        "logging.tensorboard=false",
        "logging.plot=false",
        *extra,
    ]


def _cli(overrides: list[str], *flags: str) -> list[str]:
    args = [sys.executable, "-m", "reflectioncoder.cli", "train", "--preset", "tiny", *flags]
    for o in overrides:
        args += ["--set", o]
    return args


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _env() -> dict[str, str]:
    return dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")


def test_fresh_launch_into_a_run_is_refused_until_resume_or_overwrite(tmp_path, seed):
    data = write_toy_jsonl(tmp_path / "toy.jsonl", 4, seed=seed)
    out = tmp_path / "run"
    overrides = _overrides(data, out, seed)
    trainer = Trainer(load_config(base="tiny", overrides=overrides))
    trainer.train()
    trainer.close()
    assert [p.name for p in list_checkpoints(out)] == ["step-000001", "step-000002"]
    before = _snapshot(out)

    proc = subprocess.run(_cli(overrides), capture_output=True, text=True, env=_env())
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert str(out) in lines[0] and "--resume" in lines[0] and "--overwrite" in lines[0]
    assert _snapshot(out) == before  # checkpoints, metrics, config: untouched

    # --overwrite starts over: the old run's checkpoints and metrics go, a new run is written.
    again = Trainer(load_config(base="tiny", overrides=overrides), overwrite=True)
    assert not list_checkpoints(out) and not read_metrics(out / "metrics.jsonl")
    again.train_step()
    again.close()
    rows = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(r)["step"] for r in rows] == [1]


def test_model_only_checkpoints_and_keep_last_keeps_the_newest(tmp_path, seed, capsys):
    from transformers import AutoModelForCausalLM

    data = write_toy_jsonl(tmp_path / "toy.jsonl", 4, seed=seed)
    out = tmp_path / "run"
    cfg = load_config(base="tiny", overrides=_overrides(data, out, seed, "checkpoint.keep_last=4"))
    trainer = Trainer(cfg)
    for step in (1, 2, 3, 4):
        trainer.step = step
        trainer.save()
    assert [int(p.name[5:]) for p in list_checkpoints(out)] == [1, 2, 3, 4]
    # Saving an older step again (a resume from an older checkpoint), keeping 1: the one just
    # written survives, whatever the step numbers of the others.
    cfg.checkpoint.keep_last = 1
    trainer.step = 2
    trainer.save()
    assert [p.name for p in list_checkpoints(out)] == ["step-000002"]
    assert not list((out / "checkpoints").glob(TMP_PREFIX + "*"))

    cfg.checkpoint.model_only = True
    cfg.checkpoint.keep_last = 2
    trainer.step = 3
    path = trainer.save()
    trainer.close()
    assert sorted(p.name for p in path.iterdir()) == ["COMPLETE", "model", "trainer_state.json"]
    model = AutoModelForCausalLM.from_pretrained(str(path / "model"))
    assert model.get_input_embeddings().weight.shape[0] == len(trainer.tokenizer)
    # --resume takes the newest RESUMABLE checkpoint; a model-only one is refused by name.
    assert latest_checkpoint(out).name == "step-000002"
    with pytest.raises(ValueError, match="model only"):
        Trainer(cfg, resume=str(path))

    # `reflectioncoder runs` lists them, a torn save too, and names what --resume would take.
    (out / "checkpoints" / (TMP_PREFIX + "step-000004")).mkdir()
    (out / "metrics.jsonl").write_text('{"step": 2, "loss": 4.25}\n')
    assert main(["runs", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(None, 3) for line in lines[:-1]] == [
        ["checkpoint", "step", "loss", "state"],
        ["checkpoints/step-000002", "2/2", "4.2500", "complete"],
        ["checkpoints/step-000003", "3/2", "-", "complete, model only (not resumable)"],
        ["checkpoints/.tmp-step-000004", "4", "-", "incomplete (its save was interrupted)"],
    ]
    assert lines[-1] == f"--resume continues from {out / 'checkpoints' / 'step-000002'}"


def test_sigkill_during_a_save_leaves_a_resumable_run(tmp_path, seed):
    data = write_toy_jsonl(tmp_path / "toy.jsonl", 12, seed=seed)
    out = tmp_path / "run"
    overrides = _overrides(data, out, seed, "checkpoint.keep_last=1")
    ckpts = out / "checkpoints"
    # Kill as soon as a save after the first is under way (its temporary folder exists).
    proc = subprocess.Popen(
        _cli(overrides), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=_env()
    )
    deadline = time.monotonic() + 240
    torn: list[Path] = []
    while time.monotonic() < deadline and proc.poll() is None and not torn:
        if ckpts.is_dir():
            torn = [p for p in ckpts.glob(TMP_PREFIX + "step-*") if int(p.name[-6:]) >= 2]
        time.sleep(0.0005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read()[-3000:]
    killed_at = int(torn[0].name[-6:])
    done = latest_checkpoint(out)
    # The save under way never became a checkpoint; the previous complete one is kept.
    if torn[0].exists():
        assert done is not None and int(done.name[5:]) == killed_at - 1
    else:  # the kill landed just after the rename: then that save is whole
        assert int(done.name[5:]) == killed_at
    logged = {r["step"]: r for r in map(json.loads, (out / "metrics.jsonl").open())}

    resumed = subprocess.run(
        _cli(overrides, "--resume"), capture_output=True, text=True, env=_env()
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"--resume: the newest complete checkpoint is {done}\n" in resumed.stderr
    rows = [json.loads(r) for r in (out / "metrics.jsonl").open()]
    assert [r["step"] for r in rows] == list(range(1, 7))
    # The step the kill interrupted is recomputed from the previous checkpoint, identically.
    start = int(done.name[5:]) + 1
    for r in rows[start - 1 : killed_at]:
        assert r["loss"] == logged[r["step"]]["loss"], r["step"]
    assert not list(ckpts.glob(TMP_PREFIX + "*"))
    assert [p.name for p in list_checkpoints(out)] == ["step-000006"]
