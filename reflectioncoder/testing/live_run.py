"""Real training runs a test acts on while they train (a signal, a kill, a second launch)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import IO

from reflectioncoder.testing.cli import train_argv
from reflectioncoder.testing.toy_jsonl import write_toy_jsonl

LAUNCH = [sys.executable, "-m", "reflectioncoder.launch"]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]  # plain torchrun: -m reflectioncoder.cli
STEP_PLAN = "optimizer steps"  # the trainer's step plan: said once the ranks train


def long_run_sets(tmp_path: Path) -> dict[str, object]:
    """The ``--set``s of a tiny-preset run long enough (1000 steps) to act on while it trains:
    its toy data written to ``tmp_path/toy.jsonl``, its run folder ``tmp_path/run``."""
    data = write_toy_jsonl(tmp_path / "toy.jsonl", 2000, seed=0)
    return {"data.files": f"[{data}]", "model.tokenizer_vocab_size": 400,
            "train.max_steps": 1000, "logging.report_to": "[none]",
            "checkpoint.out_dir": tmp_path / "run"}  # fmt: skip


def read_until(stream: IO[str], marker: str) -> list[str]:
    """The lines of ``stream`` up to the first holding ``marker`` (all of them if none does)."""
    lines = []
    for line in stream:
        lines.append(line)
        if marker in line:
            break
    return lines


def start_training_launch(
    tmp_path: Path,
    nproc: int = 1,
    more_sets: Mapping[str, object] | None = None,
    flags: tuple[str, ...] = (),
    torchrun: bool = False,
    **popen,
) -> tuple[subprocess.Popen, list[str]]:
    """Start ``python -m reflectioncoder.launch --nproc_per_node NPROC train --preset tiny`` on
    :func:`long_run_sets` (updated by ``more_sets``; ``flags``: more of train's, ``--resume``)
    and return once its ranks train: the process (stderr a text pipe, still open) and the
    stderr lines read so far (all of them if it ended first). ``popen`` goes to
    ``subprocess.Popen`` (``start_new_session``, say); ``torchrun``: launched with plain
    ``torchrun ... -m reflectioncoder.cli`` instead."""
    sets = {**long_run_sets(tmp_path), **(more_sets or {})}
    command = ["-m", "reflectioncoder.cli"] if torchrun else []
    argv = [*(TORCHRUN if torchrun else LAUNCH), "--nproc_per_node", str(nproc), *command,
            *train_argv(sets, "--no-progress", *flags)]  # fmt: skip
    proc = subprocess.Popen(argv, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, **popen)  # fmt: skip
    return proc, read_until(proc.stderr, STEP_PLAN)
