"""The compute saved against the reference, reported per epoch (issue 3, Build 4: "the padding
waste and the compute saved against the reference (2 x samples x padded length) reported per
epoch"): each metrics row carries `reference_tokens` (what the reference recipe runs for the
step's samples: both passes padded to their micro-batch's longest sample, summed over ranks with
the step's other totals), and `reflectioncoder train` logs one line per epoch with the two
totals."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from reflectioncoder.cli import main as cli_main
from reflectioncoder.testing.cli import train_argv

SMALL = Path(__file__).resolve().parent / "data" / "reflection_small.jsonl"


@pytest.mark.slow
def test_train_logs_each_epoch_against_the_reference(tmp_path, caplog):
    out = tmp_path / "run"
    sets = {
        "data.files": f"[{SMALL}]",  # 3 samples: 2 per step, 3 epochs = 5 steps
        "train.epochs": 3,
        "train.samples_per_step": 2,
        "checkpoint.out_dir": out,
        "checkpoint.save_every": 0,
        "logging.report_to": "[none]",
        "logging.plot": "false",
    }
    with caplog.at_level("INFO"):
        assert cli_main(train_argv(sets, "--no-progress")) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").open()]
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("epoch ")]
    # one step is `step 3` (journey9), several `steps 4-5`
    got = [
        re.match(r"epoch (\d+), steps? (\d+)(?:-(\d+))?: (\d+) tokens .* runs (\d+) ", x)
        for x in lines
    ]
    assert [m.groups()[:3] for m in got] == [("1", "1", "2"), ("2", "3", None), ("3", "4", "5")]
    for m in got:
        first, last, tokens, reference = (int(g or m.group(2)) for g in m.groups()[1:])
        span = rows[first - 1 : last]
        assert tokens == sum(r["tokens"] for r in span)
        assert reference == sum(r["reference_tokens"] for r in span) > tokens
