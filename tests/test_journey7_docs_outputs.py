"""What the docs show a command or a run writing is what it writes today (a new user compares
the two): docs/training.md's `OUT/metrics.jsonl` row has a real row's fields."""

from __future__ import annotations

import json
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _documented_metrics_row() -> dict:
    text = (REPO / "docs" / "training.md").read_text(encoding="utf-8")
    after = text.split("`OUT/metrics.jsonl`, one row per step", 1)[1]
    block = re.search(r"```json\n(.*?)\n```", after, re.S).group(1)
    return json.loads(block)


def test_training_doc_metrics_row_has_a_real_rows_fields(tmp_path, seed):
    """A CPU run without logging.peak_tflops: no mfu / hfu, every other field."""
    from test_trainer import tiny_config

    from reflectioncoder.train.trainer import Trainer

    trainer = Trainer(tiny_config(tmp_path, seed, n=8))
    try:
        trainer.train()
    finally:
        trainer.close()
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    written = [list(row) for row in rows if "loss" in row]
    assert written and all(keys == written[0] for keys in written)
    assert list(_documented_metrics_row()) == written[0]
