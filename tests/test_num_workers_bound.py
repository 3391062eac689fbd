"""``data.num_workers`` above the usable cores (affinity, CPU quota) is refused in one line naming
the field and where it was set, before any work, as ``train.threads`` above the cores is: more
tokenising processes than cores only share them (a config written for a 64-core node, run on a
laptop, started 64 processes)."""

from __future__ import annotations

from pathlib import Path

import torch

from reflectioncoder.cli import main
from reflectioncoder.config_loader import load_config
from reflectioncoder.cpus import usable_cores
from reflectioncoder.testing.cli import train_argv
from reflectioncoder.train import preflight
from reflectioncoder.train.distributed import DistInfo

DATA = Path(__file__).parent / "data" / "reflection_small.jsonl"


def test_more_workers_than_usable_cores_are_refused(tmp_path, capsys):
    cores = usable_cores()
    cfg = load_config(None, [f"data.files=[{DATA}]", f"data.num_workers={cores}"], base="tiny")
    info = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"), deepspeed=False)
    preflight.check_runnable(cfg, info)  # the usable cores themselves: fine
    out = tmp_path / "run"
    sets = {"data.files": f"[{DATA}]", "data.num_workers": cores + 1, "checkpoint.out_dir": out}
    assert main(train_argv(sets, "--no-progress")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    many = cores + 1
    want = (
        f"reflectioncoder train: --set data.num_workers={many}: data.num_workers: "
        f"expected at most the {cores} usable cores here (affinity, CPU quota), got {many}"
    )
    assert err == [want]
    assert not out.exists()
