"""Resume anywhere: a run checkpointed with one layout (ranks, ZeRO stage, DeepSpeed or the single
engine) continues with another, over gloo on the CPU: 2 ranks -> 1 process, 1 process -> 2
ranks, ZeRO-3 -> ZeRO-1, ZeRO-1 -> ZeRO-3. Every step takes the same samples and tokens as one
uninterrupted process (the data position is exact), and the losses after the resume match that
process's within test_distributed's tolerance (rel 1e-5 on the loss and CE, 1e-4 on the gradient
norm, 1e-3 with abs 1e-7 on KL: float32 sums in another order)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from test_distributed import REPO_ROOT, TOLERANCE, _free_port, _overrides, _rows

from reflectioncoder.config_loader import load_config
from reflectioncoder.testing.toy_jsonl import write_toy_jsonl
from reflectioncoder.train.checkpoint import read_trainer_state, step_dir
from reflectioncoder.train.restore import _state_reader, needs_conversion
from reflectioncoder.train.trainer import Trainer

STEPS, STOP = 4, 2  # the run plans 4 steps; the first part saves at step 2 and stops

SINGLE = ["distributed.backend=none", "distributed.zero_stage=0"]


def zero(stage: int) -> list[str]:
    return ["distributed.backend=deepspeed", f"distributed.zero_stage={stage}"]


def _part(overrides: list[str], resume: bool, stop: int | None) -> None:
    """Train (resuming when asked) up to ``stop`` and save there, or to the end."""
    trainer = Trainer(load_config(base="tiny", overrides=overrides), resume=resume)
    try:
        if stop is None:
            trainer.train()
        else:
            while trainer.step < stop:
                trainer.train_step()
            trainer.save()
    finally:
        trainer.close()


def _run(
    overrides: list[str], ranks: int, resume: bool, stop: int | None, script: str = __file__
) -> str:
    """One part of the run: in this process (1 rank) or under torchrun (2 ranks, ``script``
    the driver); returns the log of the torchrun part."""
    if ranks == 1:
        _part(overrides, resume, stop)
        return ""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.setdefault("TORCH_EXTENSIONS_DIR", str(REPO_ROOT / ".cache" / "torch_extensions"))
    spec = json.dumps({"overrides": overrides, "resume": resume, "stop": stop})
    args = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={ranks}"]
    args += [f"--master_port={_free_port()}", script, spec]
    proc = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return proc.stderr


@pytest.mark.slow
@pytest.mark.parametrize(
    "before, after, expect",
    [
        ((2, zero(2)), (1, SINGLE), "DeepSpeed ZeRO-2 on 2 rank(s); this run is the single"),
        ((1, SINGLE), (2, zero(1)), "the single engine on 1 rank(s); this run is DeepSpeed ZeRO-1"),
        ((2, zero(3)), (2, zero(1)), "DeepSpeed ZeRO-3 on 2 rank(s); this run is DeepSpeed ZeRO-1"),
        ((2, zero(1)), (2, zero(3)), "DeepSpeed ZeRO-1 on 2 rank(s); this run is DeepSpeed ZeRO-3"),
    ],
    ids=[
        "2-ranks-zero2-to-1-process",
        "1-process-to-2-ranks-zero1",
        "zero3-to-zero1",
        "zero1-to-zero3",
    ],
)
def test_resume_on_another_layout_continues_as_one_process(tmp_path, seed, before, after, expect):
    data = write_toy_jsonl(tmp_path / "toy.jsonl", 15, seed=seed, generation_fraction=0.2)
    common = [f"train.max_steps={STEPS}", "train.epochs=2", "logging.tensorboard=true"]
    reference, moved = tmp_path / "reference", tmp_path / "moved"
    _part(_overrides(data, reference, seed, "sample") + common + SINGLE, False, None)

    (ranks, layout), (ranks_after, layout_after) = before, after
    _run(_overrides(data, moved, seed, "sample") + common + layout, ranks, False, STOP)
    saved = read_trainer_state(step_dir(moved, STOP))
    assert saved["layout"]["world_size"] == ranks
    log = _run(
        _overrides(data, moved, seed, "sample") + common + layout_after, ranks_after, True, None
    )
    if ranks_after > 1:  # the in-process part logs through pytest's caplog, not stderr
        assert expect in log and f"at step {STOP}" in log

    want, got = _rows(reference), _rows(moved)
    assert [r["step"] for r in got] == list(range(1, STEPS + 1))
    for w, g in zip(want, got, strict=True):
        assert (g["samples"], g["tokens"]) == (w["samples"], w["tokens"]), g["step"]  # exact
        for key, rel, abs_ in TOLERANCE:
            assert g[key] == pytest.approx(w[key], rel=rel, abs=abs_), (g["step"], key)
    assert got[-1]["loss"] != got[STOP - 1]["loss"]  # the resumed part really trained
    # Rank 0 alone reports: one TensorBoard writer per part, whatever its ranks.
    assert len(list((moved / "tensorboard").glob("events.out.tfevents.*"))) == 2


def test_layouts_that_load_natively_and_one_that_cannot_convert(tmp_path):
    single = {"engine": "single", "zero_stage": None, "world_size": 1}
    ds = {"engine": "deepspeed", "zero_stage": 1, "world_size": 2}
    assert not needs_conversion(single, dict(single, world_size=4))  # whole on every rank
    assert not needs_conversion(ds, dict(ds))
    assert needs_conversion(ds, dict(ds, world_size=4))
    assert needs_conversion(ds, dict(ds, zero_stage=3))
    assert needs_conversion(ds, single) and needs_conversion(single, ds)
    zero0 = dict(ds, zero_stage=0)
    with pytest.raises(ValueError, match="ZeRO-0 on 2 rank.*distributed.zero_stage=0 on 2"):
        _state_reader(tmp_path, zero0, None)


def test_a_bf16_one_process_checkpoint_gives_each_parameter_its_fp32_master(tmp_path, seed):
    """Its model/ holds the weights rounded to bf16; another layout must read the masters."""
    import torch

    data = write_toy_jsonl(tmp_path / "toy.jsonl", 6, seed=seed)
    overrides = _overrides(data, tmp_path / "run", seed, "sample") + SINGLE
    overrides += ["train.max_steps=2", "train.epochs=2", "model.dtype=bf16"]
    trainer = Trainer(load_config(base="tiny", overrides=overrides))
    trainer.train_step()
    trainer.train_step()
    path = trainer.save()
    trainer.close()
    read = _state_reader(path, read_trainer_state(path)["layout"], trainer.info)
    engine = trainer.engine
    assert engine._masters  # bf16 weights, fp32 masters
    for name, p in trainer.module.named_parameters():
        master = engine._masters[id(p)]
        state = read(name, p.shape)
        assert torch.equal(state.weight, master.detach()), name
        assert torch.equal(state.exp_avg, engine.optimizer.state[master]["exp_avg"]), name
        assert state.step == 2.0


if __name__ == "__main__":  # one part of a run, one process per rank under torchrun
    import logging

    logging.basicConfig(level=logging.INFO)
    spec = json.loads(sys.argv[1])
    _part(spec["overrides"], spec["resume"], spec["stop"])
