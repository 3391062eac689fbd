"""Resume across ZeRO stages and engines: the cross-resumes tests/test_resume_anywhere.py and
tests/test_fsdp_engine.py leave out, over gloo on the CPU. A DeepSpeed ZeRO-0 checkpoint (its
whole state in rank 0's file, which DeepSpeed's universal conversion cannot read) resumed only as
ZeRO-0 on its own ranks; it now resumes on any layout, and any layout resumes as ZeRO-0 (fp32,
where DeepSpeed steps our AdamW, and 16 bits, where its ``FP16_UnfusedOptimizer`` keeps fp32
masters). Each run continues as one uninterrupted process: the same samples and tokens every
step, the losses within test_distributed's tolerance. A ZeRO-0 checkpoint written before its
parameters were named is refused in one line that says what to do."""

from __future__ import annotations

import json

import pytest
from test_distributed import _overrides
from test_resume_anywhere import SINGLE, zero
from test_resume_anywhere import (
    test_resume_on_another_layout_continues_as_one_process as continues_as_one_process,
)
from test_review13_fp16_loss_scale import _script_output

from reflectioncoder.cli import main
from reflectioncoder.config_loader import load_config
from reflectioncoder.testing.toy_jsonl import write_toy_jsonl
from reflectioncoder.train.trainer import Trainer

FSDP = ["distributed.backend=fsdp"]
OFFLOAD = ["distributed.offload_optimizer=true"]  # DeepSpeed's CPU Adam, the host's AdamW state


@pytest.mark.slow  # two torchrun launches of 2 ranks and a reference: 30-120 s each here
@pytest.mark.parametrize(
    "before, after, expect",
    [
        ((2, zero(0)), (2, zero(2)), "DeepSpeed ZeRO-0 on 2 rank(s); this run is DeepSpeed ZeRO-2"),
        ((2, zero(1)), (2, zero(0)), "DeepSpeed ZeRO-1 on 2 rank(s); this run is DeepSpeed ZeRO-0"),
        ((1, SINGLE), (2, zero(2)), "the single engine on 1 rank(s); this run is DeepSpeed ZeRO-2"),
        ((2, FSDP), (2, zero(1)), "FSDP2 on 2 rank(s); this run is DeepSpeed ZeRO-1 on 2"),
        ((2, zero(0)), (2, zero(2) + OFFLOAD), "ZeRO-0 on 2 rank(s); this run is DeepSpeed ZeRO-2"),
        ((2, zero(2) + OFFLOAD), (1, SINGLE), ""),  # the in-process part logs to caplog
    ],
    ids=[
        "zero0-to-zero2",
        "zero1-to-zero0",
        "1-process-to-2-ranks-zero2",
        "fsdp-to-zero1",
        "zero0-to-zero2-offloaded",
        "zero2-offloaded-to-1-process",
    ],
)
def test_cross_resume_continues_as_one_process(tmp_path, seed, before, after, expect):
    continues_as_one_process(tmp_path, seed, before, after, expect)


# In a process of its own (one DeepSpeed engine a process): resume a bf16 one-process checkpoint
# as ZeRO-0 in bf16 (a conversion into FP16_UnfusedOptimizer's fp32 masters), compare each
# master and AdamW state with what the checkpoint holds, take a step, save, and compare what the
# ZeRO-0 reader gives another layout with the engine's own masters and states.
ZERO0_BF16 = """
import json, sys, torch
from pathlib import Path
from reflectioncoder.config_loader import load_config
from reflectioncoder.train.checkpoint import read_trainer_state
from reflectioncoder.train.restore import _state_reader
from reflectioncoder.train.trainer import Trainer
overrides, source = json.loads(sys.argv[2]), Path(sys.argv[3])
trainer = Trainer(load_config(base="tiny", overrides=overrides), resume=str(source))
engine = trainer.engine
adam, masters = engine._zero0_optimizer()

def differences(read):
    worst = [0.0, 0.0, 0.0]
    for name, p in trainer.module.named_parameters():
        master, state = masters[id(p)], read(name, p.shape)
        mine = adam.state[master]
        for i, (a, b) in enumerate(((state.weight, master), (state.exp_avg, mine["exp_avg"]),
                                    (state.exp_avg_sq, mine["exp_avg_sq"]))):
            worst[i] = max(worst[i], float((a - b.detach()).abs().max()))
    steps = sorted({float(s["step"]) for s in adam.state.values()})
    return worst, steps

layout = read_trainer_state(source)["layout"]
loaded = differences(_state_reader(source, layout, trainer.info))
trainer.train_step()
path = trainer.save()
saved_layout = read_trainer_state(path)["layout"]
saved = differences(_state_reader(path, saved_layout, trainer.info))
trainer.close()
print(json.dumps([type(engine.optimizer).__name__, saved_layout, loaded, saved]))
"""


@pytest.mark.slow  # a one-process run and a DeepSpeed process: 13.5 s on a quiet 2 cores
def test_zero0_in_bf16_resumes_another_layout_and_is_read_by_one(tmp_path, seed):
    data = write_toy_jsonl(tmp_path / "toy.jsonl", 8, seed=seed)
    common = _overrides(data, tmp_path / "run", seed, "sample")
    common += ["train.max_steps=3", "train.epochs=2", "model.dtype=bf16"]
    trainer = Trainer(load_config(base="tiny", overrides=common + SINGLE))
    trainer.train_step()
    trainer.train_step()
    source = trainer.save()
    trainer.close()
    overrides = common + zero(0) + ["logging.tensorboard=false"]
    name, layout, loaded, saved = _script_output(ZERO0_BF16, json.dumps(overrides), str(source))
    assert name == "FP16_UnfusedOptimizer"
    assert layout == {"engine": "deepspeed", "zero_stage": 0, "world_size": 1}
    assert loaded == [[0.0, 0.0, 0.0], [2.0]]  # masters, m, v exactly; AdamW's step 2
    assert saved == [[0.0, 0.0, 0.0], [3.0]]


def test_an_unnamed_zero0_checkpoint_is_refused_in_one_line(tmp_path, capsys):
    """A ZeRO-0 checkpoint from before its parameters were named (no zero0_param_names.json),
    resumed as another stage: one line naming it, its layout and what to do; exit 1."""
    data = write_toy_jsonl(tmp_path / "d.jsonl", 4)
    out = tmp_path / "run"
    argv = ["train", "--preset", "tiny", "--set", f"data.files=[{data}]",
            "--set", f"checkpoint.out_dir={out}", "--set", "checkpoint.save_every=1",
            "--set", "train.max_steps=1", "--set", "logging.tensorboard=false",
            "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    step = out / "checkpoints" / "step-000001"
    state = json.loads((step / "trainer_state.json").read_text())
    state["layout"] = {"engine": "deepspeed", "zero_stage": 0, "world_size": 2}
    (step / "trainer_state.json").write_text(json.dumps(state))  # as ZeRO-0 on 2 ranks wrote it
    capsys.readouterr()
    assert main([*argv, "--resume"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"reflectioncoder train: {step}: --resume: was written by DeepSpeed ZeRO-0 on 2 rank(s) "
        "before such checkpoints named their parameters, so it cannot be resumed as the single "
        "engine on 1 rank(s); resume it with distributed.backend=deepspeed "
        "distributed.zero_stage=0 on 2 rank(s), or start a new run from its weights "
        f"(--set model.name_or_path={step / 'model'})"
    ], err
