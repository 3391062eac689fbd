"""DeepSpeed on the CPU leaves the trainer's log readable: none of its start-up noise (its
comm op's "built successfully" print, torch's FutureWarning for every collective its ZeRO calls
by a deprecated name: about 170 lines in a 2-step ZeRO-3 run on 2 ranks, config dumps,
ds_accelerator lines, op builder messages), while real warnings and errors still show."""

from __future__ import annotations

import io
import logging
import re
import warnings

import pytest
from test_distributed import _overrides, _torchrun_cli

from reflectioncoder.testing.toy_jsonl import write_toy_jsonl
from reflectioncoder.train import distributed

NOISE = [
    r"built successfully",
    r"bf16_ ?optimizer|initializing group|Max_MA|CPU Virtual Memory",
    r"FutureWarning",
    r"is deprecated",
    r"return func\(",
    r"ds_accelerator",
    r"\[INFO\]",
    r"DeepSpeed(Engine)? (info|configuration)",
    r"PyTorch extensions root|Emitting ninja|Loading extension module|Time to load",
    r"^\s+\w+ \.{4,}",  # a config dump's "  key ........ value"
]


@pytest.mark.slow  # two ranks importing DeepSpeed, 2 steps: about 45 s on 2 busy cores
@pytest.mark.parametrize("stage", [1, 3])  # 1: the BF16 optimizer; 3: the most collectives
def test_a_two_rank_zero_run_logs_only_the_trainers_lines(tmp_path, seed, stage):
    data = write_toy_jsonl(tmp_path / "toy.jsonl", 10, seed=seed, generation_fraction=0.2)
    extra = ["train.max_steps=2", "distributed.backend=deepspeed", "model.dtype=bf16"]
    extra.append(f"distributed.zero_stage={stage}")
    proc = _torchrun_cli(_overrides(data, tmp_path / "run", seed, "sample") + extra)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-4000:]
    noisy = [line for line in output.splitlines() if any(re.search(n, line) for n in NOISE)]
    assert not noisy, "\n".join(noisy[:20])
    assert f"deepspeed ZeRO-{stage}, AdamW" in proc.stderr
    assert "INFO done: 2 of 2 steps" in proc.stderr
    assert not proc.stdout.strip(), proc.stdout  # DeepSpeed printed nothing more
    trainers = [line for line in proc.stderr.splitlines() if " INFO " in line]
    assert len(trainers) == len(proc.stderr.splitlines()), proc.stderr  # every line is ours


def test_other_warnings_and_deepspeeds_own_still_show(capsys):
    """Only the two deprecated names DeepSpeed calls are hidden; its logger keeps WARNING."""
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        distributed.quiet_deepspeed()
        for name in ("reduce_scatter_tensor", "all_gather_into_tensor", "all_gather_object"):
            warnings.warn(f"`torch.distributed.{name}` is deprecated.", FutureWarning, stacklevel=1)
        warnings.warn(
            "`torch.distributed.reduce_scatter_tensor` is wrong", UserWarning, stacklevel=1
        )
    assert [str(w.message) for w in seen] == [
        "`torch.distributed.all_gather_object` is deprecated.",
        "`torch.distributed.reduce_scatter_tensor` is wrong",
    ]
    from deepspeed.utils import logger

    assert logger.getEffectiveLevel() == logging.WARNING


def test_only_the_known_lines_are_dropped_from_what_deepspeed_prints(monkeypatch):
    out = io.StringIO()
    monkeypatch.setattr("sys.stdout", out)
    with distributed.deepspeed_prints_quieted():
        print("DeepSpeed deepspeed.ops.comm.deepspeed_shm_comm_op built successfully")
        print("[WARNING] DeepSpeed deepspeed.ops.comm: shm unavailable")
        print("begin bf16_optimizer")
        print("MA 0.59 GB         Max_MA 0.59 GB         CA 0.59 GB         Max_CA 1 GB ")
        print("CPU Virtual Memory:  used = 4.53 GB, percent = 19.2%")
        print("DeepSpeed deepspeed.ops.comm.x built successfully, but")
    assert out.getvalue() == (
        "[WARNING] DeepSpeed deepspeed.ops.comm: shm unavailable\n"
        "DeepSpeed deepspeed.ops.comm.x built successfully, but\n"
    )
